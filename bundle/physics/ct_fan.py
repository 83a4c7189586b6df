"""Fan-beam CT with a flat detector: the geometry, its projector (the exact adjoint pair of the
parallel-beam one, on the rays of a point source), fan-beam FBP with cosine, redundancy (Parker)
and distance weights, and rebinning to parallel beam. Pure torch, batched over slices.

Conventions (lengths in mm; the image grid is that of `bundle.physics.ct_geometry`). At view angle
beta the source sits at -source_origin * (sin beta, cos beta) and the detector's centre at
(source_detector - source_origin) * (sin beta, cos beta); detector bin k is at
u_k = (k - (D - 1) / 2) * detector_spacing + detector_offset along (cos beta, -sin beta). The ray to
u has fan angle gamma = atan(u / source_detector) and is the parallel-beam ray of angle
theta = beta + gamma at t = source_origin * sin(gamma): as source_origin grows, the geometry turns
into `ParallelBeamGeometry`'s (the rebinning below uses exactly this relation).

Written here because neither MONAI nor the required packages have a fan-beam projector; ASTRA or
TIGRE (CUDA builds) would be the alternatives, with another install story and no CPU path for ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.physics.ct import CHUNK_POINTS, ParallelBeamProjector, _grid_parts, _split_rows, filter_sinogram
from bundle.physics.ct_geometry import ParallelBeamGeometry, RaySampling, check_sinogram, view_weights

__all__ = ("FanBeamGeometry", "FanBeamProjector", "parker_weights", "projector_for", "rebin_to_parallel", "select_views")


@dataclass(frozen=True)
class FanBeamGeometry(RaySampling):
    """A 2D fan-beam acquisition with a flat detector (module docstring for the conventions).

    Args:
        image_shape: (H, W) of the reconstructed image.
        pixel_spacing: (sy, sx) in mm.
        angles_deg: the view angles in degrees, any set (e.g. 0, 0.5, ..., 360).
        n_detectors: detector bins.
        detector_spacing: mm between bins on the detector (not at the isocentre).
        source_origin: source-to-rotation-axis distance (mm).
        source_detector: source-to-detector distance (mm), larger than `source_origin`.
        detector_offset: mm by which the detector's centre is shifted from the central ray.
        ray_step: mm between samples along each ray; default the smaller pixel spacing.
    """

    image_shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    angles_deg: tuple[float, ...]
    n_detectors: int
    detector_spacing: float
    source_origin: float
    source_detector: float
    detector_offset: float = 0.0
    ray_step: float | None = None

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.image_shape)
        if h < 2 or w < 2:
            raise InputError(f"image size must be at least 2 x 2, got {tuple(self.image_shape)}")
        sy, sx = (float(v) for v in self.pixel_spacing)
        for name, value in (("pixel size", sy), ("pixel size", sx), ("detector spacing", self.detector_spacing),
                            ("source-origin distance", self.source_origin),
                            ("source-detector distance", self.source_detector)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise InputError(f"{name} must be a positive number of mm, got {value}")
        if float(self.source_detector) <= float(self.source_origin):
            raise InputError(f"source-detector distance {self.source_detector} mm must exceed the source-origin "
                             f"distance {self.source_origin} mm (the detector lies beyond the rotation axis)")
        if int(self.n_detectors) < 1:
            raise InputError(f"detector count must be at least 1, got {self.n_detectors}")
        angles = tuple(float(a) for a in self.angles_deg)
        if not angles or not all(math.isfinite(a) for a in angles):
            raise InputError("the view angles must be a non-empty list of finite numbers (degrees)")
        if not math.isfinite(float(self.detector_offset)):
            raise InputError(f"detector offset must be a finite number, got {self.detector_offset}")
        object.__setattr__(self, "image_shape", (h, w))
        object.__setattr__(self, "pixel_spacing", (sy, sx))
        object.__setattr__(self, "angles_deg", angles)
        object.__setattr__(self, "n_detectors", int(self.n_detectors))
        for name in ("detector_spacing", "source_origin", "source_detector", "detector_offset"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.diagonal / 2 >= self.source_origin:
            raise InputError(f"the image grid ({h} x {w} pixels of {sy:g} x {sx:g} mm) reaches the source "
                             f"({self.source_origin:g} mm from the axis)")

    @property
    def n_views(self) -> int:
        return len(self.angles_deg)

    @property
    def n_det(self) -> int:
        return self.n_detectors

    @property
    def magnification(self) -> float:
        return self.source_detector / self.source_origin

    @property
    def det_spacing(self) -> float:
        """Bin spacing at the rotation axis (mm): the detector's divided by the magnification."""
        return self.detector_spacing / self.magnification

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_views, self.n_det)

    def angles(self) -> torch.Tensor:
        """View angles in radians, (n_views,) float64."""
        return torch.deg2rad(torch.tensor(self.angles_deg, dtype=torch.float64))

    def detector_positions(self, device=None) -> torch.Tensor:
        """u of each bin on the detector (mm), (D,) float64."""
        k = torch.arange(self.n_det, device=device, dtype=torch.float64)
        return (k - (self.n_det - 1) / 2) * self.detector_spacing + self.detector_offset

    def fan_angles(self, device=None) -> torch.Tensor:
        """gamma of each bin (radians), (D,) float64."""
        return torch.atan(self.detector_positions(device) / self.source_detector)

    @property
    def half_fan(self) -> float:
        """The largest |gamma| (radians)."""
        return float(self.fan_angles().abs().max())

    def ray_grid(self, views: slice, device, dtype) -> torch.Tensor:
        """(1, V*D, S, 2) grid_sample coordinates of points every `step` mm along each ray of
        `views`, centred on the ray's closest approach to the axis and crossing the image."""
        (h, w), (sy, sx) = self.image_shape, self.pixel_spacing
        beta = self.angles()[views].to(device)[:, None, None]
        gamma = self.fan_angles(device)[None, :, None]
        s = (torch.arange(self.n_samples, device=device, dtype=torch.float64) - (self.n_samples - 1) / 2) * self.step
        s = s[None, None, :] + self.source_origin * torch.cos(gamma)  # distance from the source
        x = -self.source_origin * torch.sin(beta) + s * torch.sin(beta + gamma)  # (V, D, S) mm
        y = -self.source_origin * torch.cos(beta) + s * torch.cos(beta + gamma)
        grid = torch.stack([x / (w * sx / 2), y / (h * sy / 2)], dim=-1)
        return grid.reshape(1, -1, self.n_samples, 2).to(dtype)

    def arc(self) -> float:
        """Radians covered by the views (`view_weights` summed: 2 pi for a full circle)."""
        return float(view_weights(self.angles()).sum())

    def redundancy(self) -> torch.Tensor:
        """(V, D) weights of each measured ray in FBP so that every line counts once:
        1/2 for a full circle, Parker's for a short scan (at least 180 degrees plus the fan),
        and 180 degrees' share of the arc below that (a limited-angle scan, where FBP is
        incomplete anyway)."""
        arc = self.arc()
        if arc >= 2 * math.pi - 1e-6:
            return torch.full(self.sinogram_shape, 0.5, dtype=torch.float64)
        if arc >= math.pi + 2 * self.half_fan:
            return parker_weights(self.angles(), self.fan_angles(), arc)
        return torch.full(self.sinogram_shape, min(arc, math.pi) / arc, dtype=torch.float64)


def parker_weights(beta: torch.Tensor, gamma: torch.Tensor, arc: float) -> torch.Tensor:
    """Parker's short-scan weights (Med. Phys. 9, 1982), for an arc of pi + 2 delta (delta at least
    the half fan angle, the over-scan of Silver's generalisation): (V, D), so that each line's two
    measurements (beta, gamma) and (beta + pi + 2 gamma, -gamma) add up to one. `beta` is taken
    from the first view, in the direction the angles increase."""
    delta = (arc - math.pi) / 2
    b = (beta - beta.min())[:, None].to(torch.float64)
    g = gamma[None, :].to(torch.float64)
    rise = torch.sin(math.pi / 4 * b / (delta - g).clamp_min(1e-12)) ** 2
    fall = torch.sin(math.pi / 4 * (math.pi + 2 * delta - b).clamp_min(0) / (delta + g).clamp_min(1e-12)) ** 2
    w = torch.ones_like(b * g)
    w = torch.where(b < 2 * (delta - g), rise, w)
    w = torch.where(b > math.pi - 2 * g, fall, w)
    return w


class FanBeamProjector(ParallelBeamProjector):
    """The fan-beam transform of a `FanBeamGeometry` as an operator: A, its exact adjoint and the
    sparse system matrix are the ray-driven ones of `ParallelBeamProjector` (the same bilinear
    sampling on this geometry's rays: the adjoint test holds for both), FBP is fan-beam's.

    Shapes: A (..., H, W) in 1/mm -> (..., V, D) line integrals; `fbp` back.
    """

    def __init__(self, geom: FanBeamGeometry) -> None:
        super().__init__(geom)  # type: ignore[arg-type]  # the ray-driven parts read only what both geometries have
        self.fan = geom

    def interpolate_backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Distance-weighted pixel-driven back-projection: each pixel sums, over the views, its
        detector row interpolated where the ray through it lands, times (source_origin / L)^2 with
        L the pixel's distance from the source along the central ray. (..., V, D) -> (..., H, W)."""
        geom = self.fan
        check_sinogram(sinogram, geom)
        (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
        lead = sinogram.shape[:-2]
        q = sinogram.reshape(1, -1, geom.n_views, geom.n_det)
        if not q.is_floating_point():
            q = q.float()
        c, dev = q.shape[1], q.device
        out = torch.zeros(c, h * w, dtype=q.dtype, device=dev)
        x = ((torch.arange(w, device=dev, dtype=torch.float64) - (w - 1) / 2) * sx)[None, None, :]
        y = ((torch.arange(h, device=dev, dtype=torch.float64) - (h - 1) / 2) * sy)[None, :, None]
        beta_all = geom.angles().to(dev)
        k = _grid_parts(dev)
        size = max(1, CHUNK_POINTS // (h * w * max(c, 1)))
        size = max(k, size - size % k)
        for start in range(0, geom.n_views, size):
            stop = min(start + size, geom.n_views)
            beta = beta_all[start:stop, None, None]
            dist = geom.source_origin + x * torch.sin(beta) + y * torch.cos(beta)  # (v, H, W)
            u = geom.source_detector * (x * torch.cos(beta) - y * torch.sin(beta)) / dist
            idx = (u - geom.detector_offset) / geom.detector_spacing + (geom.n_det - 1) / 2
            gx = (2 * idx + 1) / geom.n_det - 1
            rows = torch.arange(start, stop, device=dev, dtype=torch.float64)
            gy = ((2 * rows + 1) / geom.n_views - 1)[:, None, None].expand_as(gx)
            grid = _split_rows(torch.stack([gx, gy], -1).reshape(1, stop - start, h * w, 2).to(q.dtype), k)
            weight = ((geom.source_origin / dist) ** 2).reshape(stop - start, h * w).to(q.dtype)
            per = grid.shape[1]
            weight = F.pad(weight, (0, 0, 0, k * per - weight.shape[0])).reshape(k, 1, per, h * w)
            samples = F.grid_sample(q.expand(k, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (k, C, v / k, H*W)
            out += (samples * weight).sum(2).sum(0)
        return out.reshape(*lead, h, w)

    def fbp(self, sinogram: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
        """Fan-beam FBP for a flat detector (Kak & Slaney ch. 3.4.2): (..., V, D) line integrals ->
        (..., H, W) in 1/mm. The projections are weighted by the cosine of their fan angle and by
        `FanBeamGeometry.redundancy` (1/2, Parker's, or limited angle), filtered on the detector
        scaled to the axis (spacing `det_spacing`), and back-projected with weights
        (source_origin / L)^2 and each view's angular share (`view_weights`)."""
        geom = self.fan
        check_sinogram(sinogram, geom)
        dev = sinogram.device
        dtype = sinogram.dtype if sinogram.dtype == torch.float64 else torch.float32
        u = geom.detector_positions(dev)
        cosine = geom.source_detector / torch.sqrt(geom.source_detector**2 + u**2)
        pre = (cosine[None, :] * geom.redundancy().to(dev)).to(dtype)
        filtered = filter_sinogram(sinogram.to(dtype) * pre, filter_name)
        dbeta = (view_weights(geom.angles()) / geom.det_spacing).to(dev, dtype)
        return self.interpolate_backproject(filtered * dbeta[:, None])


def rebin_to_parallel(sinogram: torch.Tensor, geom: FanBeamGeometry, n_views: int | None = None,
                      ) -> tuple[torch.Tensor, ParallelBeamGeometry]:
    """Resample a full-circle fan-beam scan onto parallel-beam rays: (..., V, D) ->
    ((..., n_views, D), the `ParallelBeamGeometry`), views evenly over 180 degrees (default half the
    fan views), bins at the fan's axis spacing. Each parallel ray (theta, t) is the fan ray
    beta = theta - gamma, u = source_detector * tan(gamma), gamma = asin(t / source_origin),
    linearly interpolated between the two nearest views (periodic) and bins."""
    check_sinogram(sinogram, geom)
    if geom.arc() < 2 * math.pi - 1e-6:
        raise InputError("rebinning to parallel beam needs views all around the circle; use fan-beam FBP "
                         "(Parker weights) for short scans")
    n_par = int(n_views) if n_views is not None else max(1, geom.n_views // 2)
    dev = sinogram.device
    lead = sinogram.shape[:-2]
    sino = sinogram.reshape(-1, geom.n_views, geom.n_det).to(torch.float64)
    beta = torch.remainder(geom.angles(), 2 * math.pi)
    order = torch.argsort(beta)
    beta, sino = beta[order], sino[:, order]
    keep = torch.ones_like(beta, dtype=torch.bool)  # a view repeating another (0 and 360 degrees) goes
    keep[1:] = (beta[1:] - beta[:-1]) > 1e-9
    beta, sino = beta[keep], sino[:, keep]
    ext = torch.cat([beta, beta[:1] + 2 * math.pi]).to(dev)
    n_det = geom.n_det
    t = (torch.arange(n_det, dtype=torch.float64, device=dev) - (n_det - 1) / 2) * geom.det_spacing
    if float(t.abs().max()) >= geom.source_origin:
        raise InputError("the detector is wider than the source circle: cannot rebin")
    theta = torch.arange(n_par, dtype=torch.float64, device=dev) * math.pi / n_par
    gamma = torch.asin(t / geom.source_origin)[None, :]
    b = torch.remainder(theta[:, None] - gamma - ext[0], 2 * math.pi) + ext[0]  # (n_par, D) in [b0, b0 + 2 pi)
    i0 = (torch.searchsorted(ext, b.reshape(-1), right=True) - 1).clamp(0, len(beta) - 1).reshape(b.shape)
    fb = (b - ext[i0]) / (ext[i0 + 1] - ext[i0])
    i1 = torch.remainder(i0 + 1, len(beta))
    u = geom.source_detector * torch.tan(gamma)
    col = ((u - geom.detector_offset) / geom.detector_spacing + (n_det - 1) / 2).expand_as(b)
    c0 = col.floor().long()
    fc = col - c0
    out = torch.zeros(sino.shape[0], n_par, n_det, dtype=torch.float64, device=dev)
    for ci, wc in ((c0, 1 - fc), (c0 + 1, fc)):
        inside = (ci >= 0) & (ci < n_det)
        cc = ci.clamp(0, n_det - 1)
        for vi, wv in ((i0, 1 - fb), (i1, fb)):
            out += sino[:, vi, cc] * (wc * wv * inside)
    par = ParallelBeamGeometry(geom.image_shape, geom.pixel_spacing, n_views=n_par, angular_range=180.0,
                               n_detectors=n_det, detector_spacing=geom.det_spacing)
    return out.to(sinogram.dtype).reshape(*lead, n_par, n_det), par


def select_views(geom, indices: Sequence[int]):
    """The geometry of a subset of `geom`'s views (fan or parallel beam), in the order given:
    a sparse or limited-angle scan taken from a full one."""
    listed = getattr(geom, "angles_deg", None)
    angles = list(listed) if listed is not None else [float(a) for a in torch.rad2deg(geom.angles())]
    chosen = tuple(angles[int(i)] for i in indices)
    if isinstance(geom, FanBeamGeometry):
        return replace(geom, angles_deg=chosen)
    return replace(geom, n_views=len(chosen), angles_deg=chosen, view_indices=None, full_views=None)


def projector_for(geom) -> ParallelBeamProjector:
    """The projector of a fan- or parallel-beam geometry."""
    return FanBeamProjector(geom) if isinstance(geom, FanBeamGeometry) else ParallelBeamProjector(geom)
