"""CT transforms: Hounsfield-unit check and window scaling, the sparse-view / low-dose parallel-beam
acquisition (`CTAcquisition`: scan simulation and FBP over `bundle.physics.ct`), data consistency
with a scan, and the dictionary transform that simulates a slice's scan."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from bundle.errors import InputError
from bundle.physics import ct, noise
from bundle.physics.solvers import check_regularisation
from bundle.transforms.base import SliceSeededTransform, source_name

logger = logging.getLogger(__name__)

HU_WINDOW = (-1024.0, 3071.0)  # the 12-bit CT range: images, metrics and outputs use this window
HU_CHECKS = ("error", "warn", "off")
# Named display windows (level, width) in HU for figures.
DISPLAY_WINDOWS = MappingProxyType({
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "full": (1023.5, 4095.0),
})
PROJECTORS_KEPT = 64  # geometries whose projector (its norm and work count) an acquisition keeps


def hu_problem(volume: torch.Tensor) -> str | None:
    """Why `volume` does not look like CT in Hounsfield units, or None if it does.

    CT in HU always has negative values (air -1000, lung about -800, fat about -100) and a range of
    hundreds of HU; an image in [0, 1], an 8-bit image or stored values without the DICOM rescale
    intercept (all >= 0) fail this test.
    """
    v = volume.detach().float()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 200:
        return f"values span only [{lo:g}, {hi:g}]; CT in Hounsfield units spans hundreds to thousands of HU"
    if lo >= 0:
        return (f"no negative values (range [{lo:g}, {hi:g}]); air is -1000 HU and fat about -100 HU: "
                "is the rescale intercept applied?")
    if lo < -4000 or hi > 40000:
        return f"values [{lo:g}, {hi:g}] are outside any plausible HU range"
    return None


def check_hu_mode(mode: str) -> str:
    """`mode` if it is a `hu_check` setting ("error", "warn", "off"), else an `InputError`."""
    if mode not in HU_CHECKS:
        raise InputError(f"unknown hu_check {mode!r}: expected one of {', '.join(HU_CHECKS)}")
    return mode


def check_hu_window(window: Sequence[float]) -> tuple[float, float]:
    """(low, high) of a HU window as floats, else an `InputError` (high must exceed low)."""
    if not float(window[1]) > float(window[0]):
        raise InputError(f"the HU window must be (low, high) with high > low, got {tuple(window)}")
    return float(window[0]), float(window[1])


def check_hu(volume: torch.Tensor, name: str, mode: str = "error") -> None:
    """Apply the `hu_check` switch: "error" raises an `InputError`, "warn" logs, "off" skips."""
    if check_hu_mode(mode) == "off":
        return
    problem = hu_problem(volume)
    if problem is None:
        return
    message = f"{name}: not in Hounsfield units? {problem}"
    if mode == "error":
        raise InputError(message + " (set hu_check to 'warn' to go on anyway)")
    logger.warning(message)


def hu_to_unit(hu: torch.Tensor, window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    """HU -> [0, 1] over `window` (clipped): the network's and the metrics' scale."""
    lo, hi = float(window[0]), float(window[1])
    return ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)


def unit_to_hu(unit: torch.Tensor, window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    lo, hi = float(window[0]), float(window[1])
    return unit * (hi - lo) + lo


def mu_to_unit(mu: torch.Tensor, window: Sequence[float] = HU_WINDOW, mu_water: float = ct.MU_WATER) -> torch.Tensor:
    """Linear attenuation (1/mm) -> the [0, 1] scale of the HU `window` (the networks' scale), not clipped."""
    lo, hi = float(window[0]), float(window[1])
    return (ct.mu_to_hu(mu, mu_water) - lo) / (hi - lo)


def unit_to_mu(unit: torch.Tensor, window: Sequence[float] = HU_WINDOW, mu_water: float = ct.MU_WATER) -> torch.Tensor:
    """The [0, 1] scale of the HU `window` -> linear attenuation (1/mm), below air clipped to 0."""
    return ct.hu_to_mu(unit_to_hu(unit, window), mu_water)


class HounsfieldWindowd(MapTransform):
    """Check that a CT volume is in HU (per `hu_check`) and scale `window` to [0, 1], clipped.

    Stores `f"{key}_scale"` = 1.0 (the unit scale is fixed, unlike MRI's percentile scale).
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[float] = HU_WINDOW,
        hu_check: str = "error",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.hu_check = check_hu_mode(hu_check)
        self.window = check_hu_window(window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            check_hu(torch.as_tensor(d[key]), source_name(d[key]), self.hu_check)
            d[key] = hu_to_unit(d[key], self.window)
            d[f"{key}_scale"] = 1.0
        return d


class CTAcquisition:
    """A sparse-view and/or low-dose parallel-beam scan of 2D slices, reconstructed by FBP.

    Images go in and come out on the [0, 1] scale of `window` (HU); the scan is simulated on the
    linear attenuation with the slice's pixel spacing, so noise levels are physical.

    Args:
        views: projection angles used, evenly chosen from `full_views` over `angular_range`.
        full_views: the full-dose, full-view acquisition (720 over 180 degrees by default).
        angular_range: degrees.
        incident_photons: I0 per detector bin and view for low-dose simulation; None: noise-free.
        electronic_noise: standard deviation of the Gaussian electronic noise, in counts.
        filter_name: FBP filter ("ramp", "shepp-logan", "cosine", "hamming", "hann").
        window: the HU window of the [0, 1] scale.
        mu_water: linear attenuation of water (1/mm).
    """

    def __init__(
        self,
        views: int = 60,
        full_views: int = 720,
        angular_range: float = 180.0,
        incident_photons: float | None = None,
        electronic_noise: float = 0.0,
        filter_name: str = "ramp",
        window: Sequence[float] = HU_WINDOW,
        mu_water: float = ct.MU_WATER,
    ) -> None:
        self.full_views = int(full_views)
        self.angular_range = float(angular_range)
        self.set_views(views)
        if incident_photons is not None:
            noise.check_dose(float(incident_photons), float(electronic_noise))
        elif float(electronic_noise) < 0:
            noise.check_dose(1.0, float(electronic_noise))
        self.incident_photons = None if incident_photons is None else float(incident_photons)
        self.electronic_noise = float(electronic_noise)
        if filter_name not in ct.FILTERS:
            raise InputError(f"unknown FBP filter {filter_name!r}: expected one of {', '.join(ct.FILTERS)}")
        self.filter_name = filter_name
        self.window = (float(window[0]), float(window[1]))
        self.mu_water = float(mu_water)
        self._projectors: dict[ct.ParallelBeamGeometry, ct.ParallelBeamProjector] = {}

    def __getstate__(self) -> dict:
        """Pickled (e.g. into DataLoader workers) without the projectors' caches."""
        return {**self.__dict__, "_projectors": {}}

    def set_views(self, views: int) -> None:
        """Change the number of views (evaluation runs several); an `InputError` if impossible."""
        try:
            v = int(views)
        except (TypeError, ValueError):
            raise InputError(f"views must be a whole number, got {views!r}") from None
        if v != views:  # 60.5 or "60"; 60.0 passes
            raise InputError(f"views must be a whole number, got {views!r}")
        # the geometry checks zero views and more views than the full set
        ct.sparse_view_geometry((2, 2), (1.0, 1.0), v, self.full_views, self.angular_range)
        self.views = v

    def set_dose(self, incident_photons: float | None) -> None:
        if incident_photons is not None:
            noise.check_dose(float(incident_photons), self.electronic_noise)
        self.incident_photons = None if incident_photons is None else float(incident_photons)

    def geometry(self, shape: Sequence[int], spacing: Sequence[float]) -> ct.ParallelBeamGeometry:
        return ct.sparse_view_geometry((int(shape[0]), int(shape[1])), (float(spacing[0]), float(spacing[1])),
                                       self.views, self.full_views, self.angular_range)

    def projector(self, geom: ct.ParallelBeamGeometry) -> ct.ParallelBeamProjector:
        """The projector of `geom`, kept with its caches while the geometry is in use: a volume's
        slices share one. When another geometry comes, the previous projectors release their
        large caches (sampling grids, system matrix) and keep their norm and work count."""
        projector = self._projectors.get(geom)
        if projector is None:
            for other in self._projectors.values():
                other.release()
            if len(self._projectors) >= PROJECTORS_KEPT:
                self._projectors.clear()
            projector = self._projectors[geom] = ct.ParallelBeamProjector(geom)
        return projector

    def sinogram(self, unit: torch.Tensor, spacing: Sequence[float], generator=None):
        """Line integrals of (..., H, W) unit-scale slices, noisy when `incident_photons` is set.

        `generator`: a torch.Generator, or one per slice (a list) so that each slice's noise
        does not depend on the slices simulated with it.
        """
        geom = self.geometry(unit.shape[-2:], spacing)
        p = self.projector(geom).A(self.unit_to_mu(unit))
        if self.incident_photons is not None:
            # the noise is drawn on the CPU (CPU generators), so a scan's noise is the same on any device
            return self._noisy(p.cpu(), geom, generator, self.incident_photons).to(p.device), geom
        return p, geom

    def _noisy(self, p: torch.Tensor, geom: ct.ParallelBeamGeometry, generator, incident_photons: float) -> torch.Tensor:
        """Low-dose line integrals of noise-free ones `p` (CPU), one generator per slice or one for all."""
        if isinstance(generator, (list, tuple)):
            flat = p.reshape(-1, *geom.sinogram_shape)
            if len(generator) != flat.shape[0]:
                raise ValueError(f"{len(generator)} generators for {flat.shape[0]} slices")
            return torch.stack([
                noise.low_dose_line_integrals(s, incident_photons, self.electronic_noise, g)
                for s, g in zip(flat, generator)
            ]).reshape(p.shape)
        return noise.low_dose_line_integrals(p, incident_photons, self.electronic_noise, generator)

    def reconstruct(self, sinogram: torch.Tensor, geom: ct.ParallelBeamGeometry) -> torch.Tensor:
        """FBP of line integrals -> unit scale, not clipped (streaks may leave the window)."""
        return self.mu_to_unit(self.projector(geom).fbp(sinogram, self.filter_name))

    def unit_to_mu(self, unit: torch.Tensor) -> torch.Tensor:
        """[0, 1] window scale -> linear attenuation (1/mm)."""
        return unit_to_mu(unit.float(), self.window, self.mu_water)

    def mu_to_unit(self, mu: torch.Tensor) -> torch.Tensor:
        """Linear attenuation (1/mm) -> [0, 1] window scale, not clipped."""
        return mu_to_unit(mu, self.window, self.mu_water)

    def __call__(self, unit: torch.Tensor, spacing: Sequence[float], generator=None) -> torch.Tensor:
        """FBP image of the simulated scan of (..., H, W) unit-scale slices (same shape)."""
        p, geom = self.sinogram(unit, spacing, generator)
        return self.reconstruct(p, geom)

    def describe(self) -> str:
        dose = "noise-free" if self.incident_photons is None else f"I0 {self.incident_photons:g}"
        return f"{self.views}/{self.full_views} views, {dose}"


class CTDataConsistency:
    """Make a reconstruction agree with the scan it came from (`bundle.physics.ct.sinogram_consistency`):
    images on the [0, 1] scale of the acquisition's HU window, solved on the linear attenuation
    with the acquisition's projector for the given pixel spacing. The default weight and iterations
    were chosen on the validation CT (docs/README.md, CT).

    Args:
        acquisition: the scan (views, window, attenuation of water).
        weight: the regularisation weight relative to the largest eigenvalue of A^T A.
        iterations: conjugate-gradient steps; 0 switches data consistency off.
    """

    def __init__(self, acquisition: CTAcquisition, weight: float = 1e-3, iterations: int = 12) -> None:
        self.acquisition = acquisition
        self.set(weight, iterations)

    def set(self, weight: float, iterations: int) -> None:
        """Change the weight and the number of iterations; an `InputError` if impossible."""
        self.weight, self.iterations = check_regularisation(weight, iterations, ("dc_weight", "dc_iterations"))

    def __call__(self, unit: torch.Tensor, sinogram: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        """(..., H, W) unit-scale images and their (..., V, D) scans -> consistent images (same shape)."""
        if self.iterations == 0:
            return unit
        acq = self.acquisition
        geom = acq.geometry(unit.shape[-2:], spacing)
        mu = ct.sinogram_consistency(acq.unit_to_mu(unit), sinogram.float(), acq.projector(geom), self.weight,
                                     self.iterations)
        return acq.mu_to_unit(mu).to(unit.dtype)


class SimulateCTd(SliceSeededTransform):
    """Replace a (1, H, W) unit-scale CT slice by the FBP of its simulated scan.

    Writes `label` (the slice), the key itself (the FBP image: the network input) and `views`.
    When `deterministic`, the noise depends only on `seed_key`'s value (e.g. "file:slice"), so
    validation numbers are reproducible. The slice's spacing is read from `spacing_key` (mm).
    With `sinogram_key`, the scan itself ((V, D) line integrals) is kept there too, for data
    consistency at evaluation (`CTDataConsistency`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        acquisition: CTAcquisition,
        deterministic: bool = True,
        seed_key: str = "slice_id",
        spacing_key: str = "pixel_spacing",
        label_key: str = "label",
        sinogram_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, deterministic, seed_key, label_key, allow_missing_keys)
        self.acquisition = acquisition
        self.spacing_key = spacing_key
        self.sinogram_key = sinogram_key

    def _generator(self, d: Mapping) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed(d, "ct", self.acquisition.views))

    def _spacing(self, d: Mapping) -> list[float]:
        spacing = d.get(self.spacing_key, (1.0, 1.0))
        spacing = [float(s) for s in (spacing.tolist() if torch.is_tensor(spacing) else spacing)]
        if len(spacing) != 2 or not all(s > 0 and math.isfinite(s) for s in spacing):
            raise InputError(f"pixel spacing must be two positive numbers (mm), got {spacing}")
        return spacing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return self.call_batch([data])[0]

    def call_batch(self, items: Sequence[Mapping]) -> list[dict]:
        """Simulate several slices of one shape and spacing in one batch (several times faster
        per slice than one by one); the result equals calling the transform on each."""
        out = [dict(d) for d in items]
        if not out:
            return out
        spacing = self._spacing(out[0])
        if any(self._spacing(d) != spacing for d in out[1:]):
            raise ValueError("call_batch needs slices of one pixel spacing")
        generators = [self._generator(d) for d in out]
        for key in self.key_iterator(out[0]):
            images = torch.stack([convert_to_tensor(d[key], track_meta=False).float() for d in out])
            sinograms, geom = self.acquisition.sinogram(images, spacing, generators)
            fbp_images = self.acquisition.reconstruct(sinograms, geom).float()
            for d, image, rec, sino in zip(out, images, fbp_images, sinograms):
                d[self.label_key] = image
                d[key] = rec
                d["views"] = self.acquisition.views
                if self.sinogram_key:
                    d[self.sinogram_key] = sino[0].float()
        return out
