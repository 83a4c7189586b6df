"""The CT geometry: Hounsfield units and attenuation, the parallel-beam acquisition, the sample
points of its rays and pixels, and the shape checks of images and sinograms. Pure torch.

Conventions (all lengths in mm): pixel (i, j) of an (H, W) image with spacing (sy, sx) has its
centre at x = (j - (W - 1) / 2) * sx, y = (i - (H - 1) / 2) * sy. The ray of view angle theta and
detector position t is {t * (cos theta, -sin theta) + s * (sin theta, cos theta)} in (x, y), the
convention of scikit-image's `radon` (theta = 0 sums the image along its rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from bundle.errors import InputError

MU_WATER = 0.0192  # linear attenuation of water in 1/mm at about 70 keV (NIST XCOM: 0.193 cm^2/g)


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """Hounsfield units -> linear attenuation (1/mm), negative values (below air) clipped to 0."""
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """Linear attenuation (1/mm) -> Hounsfield units."""
    return 1000.0 * (mu / mu_water - 1.0)


class RaySampling:
    """The sampling along rays that both geometries share: every `step` mm (default the smaller
    pixel spacing), enough samples to cross the image diagonal."""

    image_shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    ray_step: float | None

    @property
    def step(self) -> float:
        return float(self.ray_step) if self.ray_step else min(self.pixel_spacing)

    @property
    def diagonal(self) -> float:
        (h, w), (sy, sx) = self.image_shape, self.pixel_spacing
        return math.hypot(h * sy, w * sx)

    @property
    def n_samples(self) -> int:
        """Samples along each ray: enough to cross the image diagonal."""
        return int(math.ceil(self.diagonal / self.step)) + 1


@dataclass(frozen=True)
class ParallelBeamGeometry(RaySampling):
    """A 2D parallel-beam acquisition.

    Args:
        image_shape: (H, W) of the reconstructed image.
        pixel_spacing: (sy, sx) in mm.
        n_views: number of projection angles, evenly spaced over `angular_range` (endpoint excluded).
        angular_range: degrees covered by the views (180 for a full parallel-beam scan).
        start_angle: degrees of the first view.
        n_detectors: detector bins; default enough to cover the image diagonal.
        detector_spacing: mm between detector bins; default the smaller pixel spacing.
        ray_step: mm between samples along each ray; default the smaller pixel spacing.
        view_indices: optional subset of a full set of views: the angles are then
            `start + view_indices * angular_range / full_views` (sparse-view acquisitions).
        full_views: the size of the full set that `view_indices` index.
        angles_deg: any set of view angles (degrees) instead of the evenly spaced ones (measured
            scans: `bundle.data.ctraw`); `n_views` must equal its length.
        detector_offset: mm by which the detector's centre is shifted along t (the central bin
            then sits at t = detector_offset).
    """

    image_shape: tuple[int, int]
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    n_views: int = 180
    angular_range: float = 180.0
    start_angle: float = 0.0
    n_detectors: int | None = None
    detector_spacing: float | None = None
    ray_step: float | None = None
    view_indices: tuple[int, ...] | None = None
    full_views: int | None = None
    angles_deg: tuple[float, ...] | None = None
    detector_offset: float = 0.0

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.image_shape)
        if h < 2 or w < 2:
            raise InputError(f"image shape must be at least 2 x 2, got {tuple(self.image_shape)}")
        sy, sx = (float(v) for v in self.pixel_spacing)
        if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
            raise InputError(f"pixel spacing must be positive, got {tuple(self.pixel_spacing)}")
        if int(self.n_views) < 1:
            raise InputError(f"the number of views must be at least 1, got {self.n_views}")
        if not 0 < float(self.angular_range) <= 360:
            raise InputError(f"angular_range must be in (0, 360] degrees, got {self.angular_range}")
        if self.n_detectors is not None and int(self.n_detectors) < 1:
            raise InputError(f"n_detectors must be at least 1, got {self.n_detectors}")
        if self.view_indices is not None:
            if self.full_views is None or len(self.view_indices) != self.n_views:
                raise InputError("view_indices needs full_views and one index per view")
            if min(self.view_indices) < 0 or max(self.view_indices) >= self.full_views:
                raise InputError(f"view indices must lie in [0, {self.full_views})")
        if self.angles_deg is not None:
            if len(self.angles_deg) != int(self.n_views):
                raise InputError(f"{len(self.angles_deg)} angles for {self.n_views} views")
            if not all(math.isfinite(float(a)) for a in self.angles_deg):
                raise InputError("the view angles must be finite numbers")
            object.__setattr__(self, "angles_deg", tuple(float(a) for a in self.angles_deg))
        if not math.isfinite(float(self.detector_offset)):
            raise InputError(f"detector offset must be a finite number, got {self.detector_offset}")
        object.__setattr__(self, "image_shape", (h, w))
        object.__setattr__(self, "pixel_spacing", (sy, sx))
        object.__setattr__(self, "n_views", int(self.n_views))

    @property
    def det_spacing(self) -> float:
        return float(self.detector_spacing) if self.detector_spacing else min(self.pixel_spacing)

    @property
    def n_det(self) -> int:
        if self.n_detectors:
            return int(self.n_detectors)
        return int(math.ceil(self.diagonal / self.det_spacing)) | 1  # odd: a bin through the centre

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_views, self.n_det)

    def angles(self) -> torch.Tensor:
        """View angles in radians, (n_views,) float64."""
        if self.angles_deg is not None:
            return torch.deg2rad(torch.tensor(self.angles_deg, dtype=torch.float64))
        if self.view_indices is not None and self.full_views is not None:
            idx = torch.tensor(self.view_indices, dtype=torch.float64)
            deg = self.start_angle + idx * self.angular_range / self.full_views
        else:
            deg = self.start_angle + torch.arange(self.n_views, dtype=torch.float64) * self.angular_range / self.n_views
        return torch.deg2rad(deg)


    def ray_grid(self, views: slice, device, dtype) -> torch.Tensor:
        """(1, V*D, S, 2) grid_sample coordinates of the sample points of the rays of `views`
        (the projector's and the system matrix's one entry to a geometry)."""
        return make_ray_grid(self, views, device, dtype)

    def view_weights(self) -> torch.Tensor:
        """FBP's angular weight of each view (radians, (n_views,) float64): its share of the
        angles covered (`view_weights`), times the fraction of them that measure each line once
        (180 degrees of any larger arc: a 360-degree scan measures each line twice)."""
        w = view_weights(self.angles())
        arc = float(w.sum())
        return w * (min(arc, math.pi) / arc)


def view_weights(angles: torch.Tensor) -> torch.Tensor:
    """The angle each view stands for (radians, same order as `angles`): half the gaps to its two
    neighbours, the ends of an arc their one gap, so n evenly spaced views over an arc R get R / n
    each. A set that closes the circle (its wrap-around gap no more than 1.5 times the median gap)
    is treated as periodic: a last view repeating the first at 360 degrees shares its weight."""
    a = angles.to(torch.float64).reshape(-1)
    n = a.numel()
    if n == 1:
        return torch.full((1,), math.pi, dtype=torch.float64)
    order = torch.argsort(a)
    s = a[order]
    s = s - s[0]
    gaps = s[1:] - s[:-1]
    wrap = 2 * math.pi - float(s[-1])
    if -1e-9 <= wrap <= 1.5 * float(gaps.median()):
        all_gaps = torch.cat([gaps, gaps.new_tensor([max(wrap, 0.0)])])
        w = (all_gaps + torch.roll(all_gaps, 1)) / 2
    else:
        left = torch.cat([gaps[:1], gaps])
        right = torch.cat([gaps, gaps[-1:]])
        w = (left + right) / 2
    out = torch.empty_like(w)
    out[order] = w
    return out


def sparse_view_geometry(
    image_shape: tuple[int, int],
    pixel_spacing: tuple[float, float],
    n_views: int,
    full_views: int = 720,
    angular_range: float = 180.0,
    **kwargs,
) -> ParallelBeamGeometry:
    """`n_views` evenly chosen from a full set of `full_views` angles (e.g. 720 -> 60: every 12th)."""
    n_views, full_views = int(n_views), int(full_views)
    if n_views < 1:
        raise InputError(f"the number of views must be at least 1, got {n_views}")
    if full_views < 1:
        raise InputError(f"full_views must be at least 1, got {full_views}")
    if n_views > full_views:
        raise InputError(f"{n_views} views requested but the full acquisition has only {full_views}")
    idx = tuple(int(i) for i in torch.floor(torch.arange(n_views, dtype=torch.float64) * full_views / n_views))
    return ParallelBeamGeometry(
        image_shape, pixel_spacing, n_views=n_views, angular_range=angular_range, view_indices=idx,
        full_views=full_views, **kwargs,
    )



def make_ray_grid(geom: ParallelBeamGeometry, views: slice, device, dtype) -> torch.Tensor:
    """(1, V*D, S, 2) grid_sample coordinates of the sample points of the rays of `views`,
    every `geom.step` mm along each ray (align_corners=False)."""
    (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
    theta = geom.angles()[views].to(device)
    n_s = geom.n_samples
    t = (torch.arange(geom.n_det, device=device, dtype=torch.float64) - (geom.n_det - 1) / 2) * geom.det_spacing
    t = t + geom.detector_offset
    s = (torch.arange(n_s, device=device, dtype=torch.float64) - (n_s - 1) / 2) * geom.step
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    x = t[None, :, None] * cos + s[None, None, :] * sin  # (V, D, S) mm
    y = -t[None, :, None] * sin + s[None, None, :] * cos
    # align_corners=False: -1 and 1 are the outer edges of the border pixels
    grid = torch.stack([x / (w * sx / 2), y / (h * sy / 2)], dim=-1)
    return grid.reshape(1, -1, n_s, 2).to(dtype)


def make_pixel_grid(geom: ParallelBeamGeometry, views: slice, device, dtype) -> torch.Tensor:
    """(1, v, H*W, 2) grid_sample coordinates of each pixel's detector position in each view."""
    (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
    theta = geom.angles()[views].to(device)
    idx = torch.arange(views.start, views.stop, device=device, dtype=torch.float64)
    x = ((torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2) * sx)[None, :]
    y = ((torch.arange(h, device=device, dtype=torch.float64) - (h - 1) / 2) * sy)[:, None]
    t = x * torch.cos(theta)[:, None, None] - y * torch.sin(theta)[:, None, None]  # (v, H, W) mm
    u = (t - geom.detector_offset) / geom.det_spacing + (geom.n_det - 1) / 2  # detector index
    gx = (2 * u + 1) / geom.n_det - 1  # align_corners=False
    gy = ((2 * idx + 1) / geom.n_views - 1)[:, None, None].expand_as(gx)
    return torch.stack([gx, gy], dim=-1).reshape(1, len(idx), h * w, 2).to(dtype)



class ShapedGeometry(Protocol):
    """What the shape checks read of a geometry (parallel or fan beam)."""

    @property
    def image_shape(self) -> tuple[int, int]: ...
    @property
    def sinogram_shape(self) -> tuple[int, int]: ...
    @property
    def n_views(self) -> int: ...
    @property
    def n_det(self) -> int: ...


def check_image(image: torch.Tensor, geom: ShapedGeometry) -> torch.Tensor:
    if image.ndim < 2 or tuple(image.shape[-2:]) != geom.image_shape:
        raise InputError(f"image of shape {tuple(image.shape)} does not match the geometry's {geom.image_shape}")
    return image


def check_sinogram_shape(sinogram: torch.Tensor, geom: ShapedGeometry, name: str = "sinogram") -> None:
    if sinogram.ndim < 2 or tuple(sinogram.shape[-2:]) != geom.sinogram_shape:
        raise InputError(
            f"{name} of shape {tuple(sinogram.shape)} does not match the geometry: expected (..., views, detectors) "
            f"= (..., {geom.n_views}, {geom.n_det})"
        )


def check_sinogram(sinogram: torch.Tensor, geom: ShapedGeometry, name: str = "sinogram") -> torch.Tensor:
    """An `InputError` unless `sinogram` is (..., n_views, n_detectors) for `geom` and finite."""
    check_sinogram_shape(sinogram, geom, name)
    if not torch.isfinite(sinogram).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return sinogram
