"""The PET scan of a batch of slices: simulation at a count level, the OSEM baseline, and the
network's input and target scale. Shared by training (`PETScanBatch`, the engines' prepare_batch),
evaluation and inference, so all three see the same physics."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bundle.errors import InputError
from bundle.options import is_auto
from bundle.physics.ct import ParallelBeamProjector
from bundle.physics.pet import (
    BACKGROUND_FRACTION,
    FULL_COUNTS_PER_SLICE,
    PSF_FWHM_MM,
    PETOperator,
    attenuation_factors,
    calibration,
    check_count_fraction,
    flat_background,
    osem,
    pet_geometry,
    poisson_counts,
    post_filter,
)

# The post-filtered OSEM baseline a physicist would run at each count level (fraction of the full
# count): (level, iterations of 8 subsets, post-filter FWHM mm), the best validation PSNR in the head
# over 1-10 iterations x 0-8 mm filters (`python scripts/compare.py --pet`, validation IXI048, which
# prints whether its choice still agrees with this table). `baseline_iterations: auto` takes the
# row of the level nearest the scan's (log scale).
OSEM_BASELINE_BY_LEVEL = ((0.25, 10, 4.0), (0.1, 8, 4.0), (0.05, 7, 6.0))


def tuned_baseline(level: float) -> tuple[int, float]:
    """(iterations, post-filter mm) of the OSEM_BASELINE_BY_LEVEL row nearest `level` (log scale)."""
    import math

    lv = max(float(level), 1e-12)
    _, it, flt = min(OSEM_BASELINE_BY_LEVEL, key=lambda row: abs(math.log(row[0] / lv)))
    return int(it), float(flt)


def _number(v) -> float:
    """float(v), or NaN where v is not a number (so that every range check fails on it)."""
    try:
        return float("nan") if isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return float("nan")


class PETAcquisition:
    """A 2D PET scan per slice and its OSEM reconstruction.

    Args:
        views: sinogram views over 180 degrees.
        count_fraction: the low-count level as a fraction of `full_counts` (trues per slice).
        full_counts: trues of a full-count brain FDG slice (`bundle.physics.pet.FULL_COUNTS_PER_SLICE`).
        background_fraction: randoms + scatter as a fraction of the trues (flat).
        psf_fwhm_mm: the scanner's resolution, in the simulation and in the reconstruction model.
        iterations, subsets: OSEM of the network's input.
        filter_mm: post-filter of the network's input (0: none).
        baseline_iterations, baseline_filter_mm: the post-filtered OSEM baseline written beside the
            network; "auto" (default): chosen on validation for the scan's count level
            (`OSEM_BASELINE_BY_LEVEL`, `baseline_setting`).
    """

    def __init__(self, views: int = 96, count_fraction: float = 0.1, full_counts: float = FULL_COUNTS_PER_SLICE,
                 background_fraction: float = BACKGROUND_FRACTION, psf_fwhm_mm: float = PSF_FWHM_MM,
                 iterations: int = 3, subsets: int = 8, filter_mm: float = 0.0, baseline_iterations: int | str = "auto",
                 baseline_filter_mm: float | str = "auto") -> None:
        self.views = int(views)
        if self.views < 2:
            raise InputError(f"views must be at least 2, got {views!r}")
        self.count_fraction = check_count_fraction(count_fraction)
        self.full_counts = float(full_counts)
        if not self.full_counts > 0:
            raise InputError(f"full_counts must be above 0, got {full_counts!r}")
        self.background_fraction = float(background_fraction)
        if not 0 <= self.background_fraction <= 10:
            raise InputError(f"background_fraction must be in [0, 10], got {background_fraction!r}")
        self.psf_fwhm_mm = float(psf_fwhm_mm)

        def auto(v) -> bool:  # the word only (None is not a baseline setting here)
            return isinstance(v, str) and is_auto(v)

        for name, v in (("psf_fwhm_mm", psf_fwhm_mm), ("filter_mm", filter_mm), ("baseline_filter_mm", baseline_filter_mm)):
            if name == "baseline_filter_mm" and auto(v):
                continue
            if not 0 <= _number(v) <= 50:
                raise InputError(f"{name} must be in [0, 50] mm{' or auto' if name.startswith('baseline') else ''}, got {v!r}")
        for name, v in (("iterations", iterations), ("baseline_iterations", baseline_iterations)):
            if name == "baseline_iterations" and auto(v):
                continue
            if not (1 <= _number(v) <= 1000 and float(v) == int(float(v))):
                raise InputError(f"{name} must be a whole number in [1, 1000]{' or auto' if name.startswith('baseline') else ''}, got {v!r}")
        if not 1 <= int(subsets) <= self.views:
            raise InputError(f"subsets must be in [1, {self.views}] (the views), got {subsets!r}")
        self.iterations, self.subsets, self.filter_mm = int(float(iterations)), int(subsets), float(filter_mm)
        self.baseline_iterations: int | None = None if auto(baseline_iterations) else int(baseline_iterations)
        self.baseline_filter_mm: float | None = None if auto(baseline_filter_mm) else float(baseline_filter_mm)
        self._systems: dict[tuple, PETOperator] = {}

    def base_system(self, shape: Sequence[int], pixel_mm: float, views: int | None = None) -> PETOperator:
        """The system without multiplicative factors (projector and PSF) of a (H, W) grid of
        `pixel_mm` pixels with this scan's views (or `views`), built once per grid: batches get
        theirs from it (`PETOperator.with_factors`), sharing its projector and subsets."""
        key = (tuple(int(s) for s in shape), round(float(pixel_mm), 6), int(views or self.views))
        if key not in self._systems:
            self._systems[key] = PETOperator(ParallelBeamProjector(pet_geometry(key[0], key[1], key[2])), None,
                                             self.psf_fwhm_mm)
        return self._systems[key]

    def projector(self, shape: Sequence[int], pixel_mm: float, views: int | None = None) -> ParallelBeamProjector:
        """The projector of a (H, W) grid of `pixel_mm` pixels with this scan's views (or `views`)."""
        return self.base_system(shape, pixel_mm, views).projector

    def system(self, mu: torch.Tensor, pixel_mm: float, normalisation: torch.Tensor | None = None) -> PETOperator:
        """The uncalibrated system of (B, H, W) mu-maps: attenuation (x normalisation) and the PSF."""
        base = self.base_system(mu.shape[-2:], pixel_mm)
        factors = attenuation_factors(base.projector, mu)
        if normalisation is not None:
            factors = factors * normalisation
        return base.with_factors(factors)

    @staticmethod
    def calibrate(op: PETOperator, activity: torch.Tensor, trues: torch.Tensor) -> torch.Tensor:
        """Scale `op`'s factors so the expected trues of each slice of `activity` are `trues`
        ((B, 1, 1)); returns those expected trues (B, V, D). One projection."""
        projected = op.A(activity)
        scale = calibration(projected, trues)
        assert op.factors is not None
        op.factors = op.factors * scale
        return projected * scale

    def simulate(self, activity: torch.Tensor, mu: torch.Tensor, pixel_mm: float,
                 fractions: Sequence[float] | torch.Tensor | None = None,
                 generators: Sequence[torch.Generator | None] | None = None) -> tuple[PETOperator, torch.Tensor, torch.Tensor]:
        """(B, H, W) activity and mu -> (calibrated system, counts (B, V, D), background (B, V, D)).

        The system is calibrated so the expected trues of slice b are fractions[b] x full_counts:
        OSEM with it returns activity in the input's units."""
        op = self.system(mu, pixel_mm)
        b = activity.shape[0]
        f = torch.as_tensor(self.count_fraction if fractions is None else fractions, dtype=torch.float32)
        f = f.expand(b) if f.dim() == 0 else f
        trues = (f * self.full_counts).to(activity.device)[:, None, None]
        expected = self.calibrate(op, activity, trues)
        background = flat_background(expected, self.background_fraction)
        rates = expected + background
        if generators is None:
            counts = poisson_counts(rates)
        else:
            counts = torch.stack([poisson_counts(rates[i].cpu(), g).to(rates.device) for i, g in enumerate(generators)])
        return op, counts, background

    def reconstruct(self, op: PETOperator, counts: torch.Tensor, background: torch.Tensor,
                    iterations: int | None = None, filter_mm: float | None = None, callback=None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """OSEM (the network's input setting unless given; `mask`: the image's support), then the
        Gaussian post-filter."""
        x = osem(op, counts, background, self.iterations if iterations is None else iterations, self.subsets,
                 mask=mask, callback=callback)
        return post_filter(x, self.filter_mm if filter_mm is None else filter_mm, op.geom.pixel_spacing[0])

    def baseline_setting(self, level: float | None = None) -> tuple[int, float]:
        """(iterations, post-filter mm) of the baseline for a scan at `level` (a fraction of the full
        count; None: `count_fraction`): the configured values, or where they are "auto" the row of
        `OSEM_BASELINE_BY_LEVEL` nearest the level."""
        it, flt = tuned_baseline(self.count_fraction if level is None else level)
        return (it if self.baseline_iterations is None else self.baseline_iterations,
                flt if self.baseline_filter_mm is None else self.baseline_filter_mm)

    def baseline(self, op: PETOperator, counts: torch.Tensor, background: torch.Tensor,
                 mask: torch.Tensor | None = None, level: float | None = None) -> torch.Tensor:
        """The post-filtered OSEM baseline (`baseline_setting(level)`)."""
        it, flt = self.baseline_setting(level)
        return self.reconstruct(op, counts, background, it, flt, mask=mask)


def anatomy_image(volume, name: str | None = None):
    """An anatomical MR volume (any array or tensor) on the MR-guided network's scale: divided by its
    99.5th percentile (over all voxels: a head fills a quarter or more of its volume, so the
    percentile lies in bright tissue whatever the scanner's units). `name`: the file, for the error."""
    import numpy as np

    v = np.asarray(volume, dtype=np.float32)
    scale = float(np.percentile(v, 99.5)) if v.size else 0.0
    if not np.isfinite(v).all() or scale <= 0:
        raise InputError(f"{name + ': ' if name else ''}an anatomical MR image must be finite and not empty "
                         "(its 99.5th percentile above 0)")
    return v / scale


def activity_scale(image: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """The network's unit per slice: the mean of the OSEM image inside the body, (B, 1, 1, 1) for
    (B, 1, H, W) images (so the network sees ~1 whatever the count level and activity units)."""
    num = (image * body).sum((-3, -2, -1), keepdim=True)
    return (num / body.sum((-3, -2, -1), keepdim=True).clamp_min(1.0)).clamp_min(1e-12)


class PETScanBatch:
    """The engines' prepare_batch for PET: for a batch of `PETPhantomSlices` items it simulates
    each slice's scan (Poisson noise from the item's seed, fresh where the seed is -1) on the
    engine's device, reconstructs it with OSEM, and returns (OSEM / s, activity / s), s the
    OSEM mean in the body (`activity_scale`). The batch's "volume_max" becomes the target's
    maximum on that scale (the metrics' data range).

    With `lesion_weight` > 0 (training only) the target gets a second channel, the per-pixel weight
    of the loss's pixel term: 1 + lesion_weight in the batch's "lesion" pixels, 1 elsewhere
    (`bundle.losses.SSIMWeightedLoss` reads it). Why: lesions are a few dozen of the ~8,000 head
    pixels of a slice, so an unweighted loss smooths them away with the noise (hot-lesion contrast
    recovery below OSEM's at matched noise, the model card).

    With `anatomy` the network's input gets a second channel, the batch's "mr" images (the T1 the
    phantom was made from, `anatomy_image` scale): the MR-guided model (`models/model_pet_mr.pt`)."""

    def __init__(self, acquisition: PETAcquisition, pixel_mm: float = 2.0, lesion_weight: float = 0.0,
                 baseline: bool = False, anatomy: bool = False) -> None:
        self.anatomy = bool(anatomy)
        self.acquisition, self.pixel_mm = acquisition, float(pixel_mm)
        if not 0 <= float(lesion_weight) <= 1000:
            raise InputError(f"lesion_weight must be in [0, 1000], got {lesion_weight!r}")
        self.lesion_weight = float(lesion_weight)
        self.baseline = bool(baseline)

    def _baseline(self, op: PETOperator, counts: torch.Tensor, bg: torch.Tensor, fractions) -> torch.Tensor:
        """The post-filtered OSEM baseline of each slice at its own count level ((B, H, W)), slices
        of one setting reconstructed together."""
        acq = self.acquisition
        levels = torch.as_tensor(fractions, dtype=torch.float64).reshape(-1).tolist()
        if len(levels) == 1:
            levels = levels * counts.shape[0]
        settings = [acq.baseline_setting(lv) for lv in levels]
        out = torch.zeros(counts.shape[0], *op.geom.image_shape, device=counts.device)
        for setting in sorted(set(settings)):
            idx = [i for i, s in enumerate(settings) if s == setting]
            f = op.factors  # per slice (B, V, D), or shared by the batch
            sub = op.with_factors(f[idx] if f is not None and f.dim() >= 3 and f.shape[0] == counts.shape[0] else f)
            out[idx] = acq.reconstruct(sub, counts[idx], bg[idx], *setting)
        return out

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        act = batchdata["activity"].to(device, non_blocking=non_blocking).float()
        mu = batchdata["mu"].to(device, non_blocking=non_blocking).float()
        seeds = [int(s) for s in torch.as_tensor(batchdata["seed"]).reshape(-1)]
        gens = None if all(s < 0 for s in seeds) else [
            torch.Generator().manual_seed(s) if s >= 0 else None for s in seeds]
        with torch.no_grad():
            op, counts, bg = self.acquisition.simulate(act[:, 0], mu[:, 0], self.pixel_mm,
                                                       batchdata["count_fraction"], gens)
            image = self.acquisition.reconstruct(op, counts, bg)[:, None]
            base = self._baseline(op, counts, bg, batchdata["count_fraction"])[:, None] if self.baseline else None
        s = activity_scale(image, (mu > 0).float())
        label = act / s
        batchdata["volume_max"] = label.amax((-3, -2, -1)).cpu()
        if base is not None:  # the evaluation's classical baseline, on the network's scale
            batchdata["baseline"] = base / s
        net_in = image / s
        if self.anatomy:
            if "mr" not in batchdata:
                raise InputError("anatomy needs the batch's 'mr' images (PETPhantomSlices(anatomy=True) writes them)")
            net_in = torch.cat([net_in, batchdata["mr"].to(net_in.device, non_blocking=non_blocking).float()], 1)
        if self.lesion_weight > 0:
            if "lesion" not in batchdata:
                raise InputError("lesion_weight needs the batch's 'lesion' maps (PETPhantomSlices writes them)")
            weight = 1 + self.lesion_weight * batchdata["lesion"].to(label.device, non_blocking=non_blocking).float()
            return net_in, torch.cat([label, weight], 1)
        return net_in, label
