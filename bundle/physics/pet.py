"""2D PET physics in torch: the emission model of a slice and its statistical reconstruction.

A slice's activity x (any activity unit per pixel, e.g. kBq/ml) is measured as counts on lines of
response (LORs) binned into a 2D sinogram (views over 180 degrees x tangential bins), as after
single-slice rebinning of a 3D scan. The expected counts are

    ybar = m * P(G x) + r,

P the line integrals of the parallel-beam projector (`bundle.physics.ct`, mm x activity), G an
optional Gaussian point-spread blur in the image (resolution modelling), m the multiplicative
factors per bin: attenuation exp(-P mu) x detector normalisation x calibration (counts per
activity x mm), and r a flat randoms-plus-scatter background, a stated fraction of the trues.
Counts are Poisson(ybar). MLEM and OSEM (ordered subsets of views) invert it with positivity;
a Gaussian post-filter is the usual regulariser.

The projector is the CT one so both modalities share one tested, adjoint-exact Radon transform;
written here because MONAI has no emission model and STIR / parallelproj are not among the
required packages (their MLEM is what this one follows: Shepp & Vardi 1982, Hudson & Larkin 1994).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.physics.ct import ParallelBeamProjector
from bundle.physics.ct_fan import select_views
from bundle.physics.ct_geometry import ParallelBeamGeometry
from bundle.physics.operator import LinearOperator

# Full-count level of one 2D slice of a brain FDG scan (trues per slice). A typical 10-minute brain
# scan 30-60 min after ~200 MBq FDG: ~7 % of the activity in the brain (~10 MBq at scan time), a
# whole-body PET(/MR) sensitivity of ~1.5 % for a centred source (mMR NEMA: 15 kcps/MBq) gives
# ~150 kcps of trues, ~9e7 trues in 600 s, over ~90 slices of 2 mm through the brain: ~1e6 trues
# per slice. Low-count scans are a fraction of it (25 %, 10 %, 5 %: shorter scans or lower doses).
FULL_COUNTS_PER_SLICE = 1.0e6
# Randoms plus scatter as a fraction of the trues in a 3D brain scan (scatter fraction ~35 % of the
# trues in the head, randoms ~15 % at brain count rates): 0.5.
BACKGROUND_FRACTION = 0.5
# 511 keV linear attenuation (1/mm): soft tissue (water) and cortical bone; air 0.
MU_SOFT_TISSUE = 0.0096
MU_BONE = 0.0172
MU_MAX = 0.05  # no tissue attenuates more at 511 keV; larger values are not a 511 keV mu-map
# Resolution of a clinical PET at the centre of the field of view (mm FWHM).
PSF_FWHM_MM = 4.0


def pet_geometry(image_shape: Sequence[int], pixel_mm: float = 2.0, views: int = 96,
                 bins: int | None = None, bin_mm: float | None = None) -> ParallelBeamGeometry:
    """The 2D sinogram geometry of a PET slice: `views` evenly over 180 degrees, `bins` tangential
    bins of `bin_mm` (default the pixel size, enough bins for the image's diagonal)."""
    if int(views) < 1:
        raise InputError(f"views must be at least 1, got {views!r}")
    h, w = (int(v) for v in image_shape)
    return ParallelBeamGeometry(image_shape=(h, w), pixel_spacing=(pixel_mm, pixel_mm),
                                n_views=int(views), angular_range=180.0, n_detectors=bins, detector_spacing=bin_mm)


def check_count_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (math.isfinite(fraction) and fraction > 0):
        raise InputError(f"count_fraction must be a number above 0, got {fraction!r}")
    return fraction


def check_mu(mu: torch.Tensor, name: str = "mu-map") -> None:
    """A 511 keV mu-map: finite, in [0, MU_MAX] 1/mm."""
    if not bool(torch.isfinite(mu).all()):
        raise InputError(f"{name}: NaN or infinite values")
    lo, hi = float(mu.min()), float(mu.max())
    if lo < 0 or hi > MU_MAX:
        raise InputError(f"{name}: values from {lo:.4g} to {hi:.4g} /mm, outside [0, {MU_MAX}] /mm "
                         "(511 keV: soft tissue 0.0096, bone 0.0172)")


def check_activity(x: torch.Tensor, name: str = "activity") -> None:
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: NaN or infinite values")
    if float(x.min()) < 0:
        raise InputError(f"{name}: negative activity ({float(x.min()):.4g})")
    if float(x.max()) <= 0:
        raise InputError(f"{name}: no activity (all zero)")


def gaussian_blur(x: torch.Tensor, fwhm_mm: float, pixel_mm: float) -> torch.Tensor:
    """Isotropic 2D Gaussian of `fwhm_mm` on (..., H, W) images, zero outside the grid, so the blur
    is its own adjoint (a symmetric kernel with zero padding). Separable; each tap is the Gaussian
    integrated over its pixel, truncated at 4 sigma: the kernel of MONAI's `GaussianFilter`
    (approx="erf"), written here because the physics layer does not import MONAI."""
    if not fwhm_mm or fwhm_mm <= 0:
        return x
    sigma = float(fwhm_mm) / (2.0 * math.sqrt(2.0 * math.log(2.0))) / float(pixel_mm)
    radius = int(max(4.0 * sigma, 0.5) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    c = 1.0 / (math.sqrt(2.0) * sigma)
    k = (0.5 * (torch.erf(c * (t + 0.5)) - torch.erf(c * (t - 0.5)))).clamp_min(0)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    flat = F.conv2d(flat, k.view(1, 1, -1, 1), padding=(radius, 0))
    flat = F.conv2d(flat, k.view(1, 1, 1, -1), padding=(0, radius))
    return flat.reshape(*lead, h, w)


class PETOperator(LinearOperator):
    """A x = m * P(G x) for (..., H, W) activity -> (..., V, D) expected trues; A^T its exact adjoint.

    Args:
        projector: the parallel-beam projector of the PET geometry.
        factors: multiplicative factors m, broadcastable to (..., V, D) (attenuation x
            normalisation x calibration); None = 1.
        psf_fwhm_mm: the image-space blur G (0: none).
    """

    def __init__(self, projector: ParallelBeamProjector, factors: torch.Tensor | None = None,
                 psf_fwhm_mm: float = 0.0) -> None:
        super().__init__()
        self.projector = projector
        self.geom = projector.geom
        self.image_shape = projector.geom.image_shape
        self.factors = factors
        self.psf_fwhm_mm = float(psf_fwhm_mm)
        self._subset_projectors: dict[tuple[int, int], ParallelBeamProjector] = {}

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, self.psf_fwhm_mm, self.geom.pixel_spacing[0])

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        y = self.projector.A(self._blur(x))
        return y if self.factors is None else y * self.factors

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        if self.factors is not None:
            y = y * self.factors
        return self._blur(self.projector.A_adjoint(y))

    def with_factors(self, factors: torch.Tensor | None) -> PETOperator:
        """The same projector and blur with other multiplicative factors (another batch of slices);
        the subsets' projectors are shared with this operator, so they are built once."""
        op = PETOperator(self.projector, factors, self.psf_fwhm_mm)
        op._subset_projectors = self._subset_projectors
        return op

    def subset(self, k: int, n: int) -> PETOperator:
        """The operator of the k-th of n ordered subsets: views k, k + n, k + 2n, ... (interleaved,
        so each subset covers 180 degrees)."""
        if n == 1:
            return self
        if (k, n) not in self._subset_projectors:
            geom = select_views(self.geom, range(k, self.geom.n_views, n))
            self._subset_projectors[(k, n)] = ParallelBeamProjector(geom)
        factors = None if self.factors is None else self.factors[..., k::n, :]
        return PETOperator(self._subset_projectors[(k, n)], factors, self.psf_fwhm_mm)


def attenuation_factors(projector: ParallelBeamProjector, mu: torch.Tensor) -> torch.Tensor:
    """exp(-integral of mu along each LOR): (..., H, W) mu in 1/mm -> (..., V, D) in (0, 1]."""
    return torch.exp(-projector.A(mu.float()))


def calibration(projected: torch.Tensor, trues: float | torch.Tensor) -> torch.Tensor:
    """Counts per (activity x mm) that make the expected trues of each slice equal `trues`, from
    the uncalibrated projection A x of the activity, (..., V, D): shape (..., 1, 1), to multiply
    into the operator's factors (and into `projected`, which then holds the expected trues)."""
    total = projected.sum((-2, -1), keepdim=True)
    return torch.as_tensor(trues, dtype=total.dtype, device=total.device) / total.clamp_min(1e-12)


def flat_background(trues: torch.Tensor, fraction: float) -> torch.Tensor:
    """A flat randoms-plus-scatter sinogram holding `fraction` of the trues (..., V, D) of each slice."""
    total = trues.sum((-2, -1), keepdim=True)
    return (fraction * total / (trues.shape[-2] * trues.shape[-1])).expand_as(trues)


def poisson_counts(expected: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Measured counts ~ Poisson(expected), independently per bin."""
    return torch.poisson(expected.clamp_min(0), generator=generator)


def em_setup(op: PETOperator, counts: torch.Tensor, background: torch.Tensor | float, iterations: int,
             subsets: int, mask: torch.Tensor | None):
    """The checked options and shared pieces of the EM family (`osem`; `pet_prior.map_em`):
    (subsets, counts y, background r as y's shape, support or None, the uniform start image whose
    expected trues match the data, its level per image (...))."""
    n_views = op.geom.n_views
    if int(subsets) < 1 or int(subsets) > n_views:
        raise InputError(f"subsets must be in [1, {n_views}] (the views), got {subsets!r}")
    if int(iterations) < 0:
        raise InputError(f"iterations must be at least 0, got {iterations!r}")
    y = counts.float()
    r = torch.as_tensor(background, dtype=y.dtype, device=y.device).expand_as(y)
    support = None if mask is None else mask.to(y.device, y.dtype)
    ones = torch.ones(*y.shape[:-2], *op.image_shape, dtype=y.dtype, device=y.device)
    if support is not None:
        ones = ones * support
    trues = (y - r).sum((-2, -1)).clamp_min(1e-6)
    level = trues / op.A(ones).sum((-2, -1)).clamp_min(1e-12)
    return int(subsets), y, r, support, ones * level[..., None, None], level


def osem(op: PETOperator, counts: torch.Tensor, background: torch.Tensor | float = 0.0, iterations: int = 4,
         subsets: int = 8, start: torch.Tensor | None = None, mask: torch.Tensor | None = None,
         callback=None) -> torch.Tensor:
    """Ordered-subsets expectation maximisation (Hudson & Larkin 1994); `subsets=1` is MLEM
    (Shepp & Vardi 1982): x <- x / (A_s^T 1) * A_s^T(y_s / (A_s x + r_s)) for each subset s of views.

    Args:
        op: the system (multiplicative factors included), images (..., H, W).
        counts: measured counts (..., V, D), non-negative.
        background: the expected randoms + scatter r, (..., V, D) or a number.
        iterations: full passes over the subsets.
        subsets: number of view subsets (views k, k + n, ...); must divide into non-empty subsets.
        start: positive initial image; default a uniform image whose expected trues match the data.
        mask: optional (H, W) support: the image is kept zero outside it.
        callback: called as callback(iteration, image) after each full pass (curves over iterations).

    The image stays non-negative (multiplicative updates of a positive start); pixels no LOR of a
    subset sees keep their value in that subset's update.
    """
    n, y, r, support, uniform, _ = em_setup(op, counts, background, iterations, subsets, mask)
    x = uniform if start is None else start.float().clamp_min(0)
    parts = [op.subset(k, n) for k in range(n)]
    sensitivity = []
    for k, part in enumerate(parts):
        s = part.A_adjoint(torch.ones_like(y[..., k::n, :]))
        sensitivity.append(s)
    for it in range(int(iterations)):
        for k, part in enumerate(parts):
            ratio = y[..., k::n, :] / (part.A(x) + r[..., k::n, :]).clamp_min(1e-12)
            s = sensitivity[k]
            x = torch.where(s > 1e-12 * s.amax((-2, -1), keepdim=True), x * part.A_adjoint(ratio) / s.clamp_min(1e-12), x)
            if support is not None:
                x = x * support
        if callback is not None:
            callback(it + 1, x)
    return x


def mlem(op: PETOperator, counts: torch.Tensor, background: torch.Tensor | float = 0.0, iterations: int = 50,
         **kwargs) -> torch.Tensor:
    """MLEM: `osem` with one subset."""
    return osem(op, counts, background, iterations=iterations, subsets=1, **kwargs)


def post_filter(x: torch.Tensor, fwhm_mm: float, pixel_mm: float) -> torch.Tensor:
    """The Gaussian post-filter of an OSEM image (FWHM in mm; 0 = none). Keeps the total."""
    return gaussian_blur(x, fwhm_mm, pixel_mm)


def pad_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad (..., H, W) symmetrically to at least `shape`."""
    h, w = x.shape[-2:]
    ph, pw = max(0, shape[0] - h), max(0, shape[1] - w)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
