"""CT physics in torch: Hounsfield units, a matched parallel-beam projector / back-projector pair,
filtered back-projection, sparse-view and low-dose (Poisson + electronic noise) simulation.

Batched over slices, differentiable, on CPU or GPU. Written here because neither MONAI nor the
required packages ship a Radon transform (scikit-image's `radon`/`iradon` are NumPy, one image at a
time, and serve only as the reference in the tests).

Geometry (all lengths in mm): pixel (i, j) of an (H, W) image with spacing (sy, sx) has its centre
at x = (j - (W - 1) / 2) * sx, y = (i - (H - 1) / 2) * sy. The ray of view angle theta and
detector position t is {t * (cos theta, -sin theta) + s * (sin theta, cos theta)} in (x, y), the
convention of scikit-image's `radon` (theta = 0 sums the image along its rows); its line
integral is sampled every `ray_step` mm with bilinear interpolation (Joseph-style, via
`grid_sample`). The back-projector is the exact adjoint of that projector (the backward kernel of
the same `grid_sample`), so <A x, y> = <x, A^T y> to float precision. Data consistency, which
applies both a few dozen times per slice, uses the same operator as an explicit sparse matrix
(`SystemMatrix`), built once per geometry.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from bundle.errors import InputError

MU_WATER = 0.0192  # linear attenuation of water in 1/mm at about 70 keV (NIST XCOM: 0.193 cm^2/g)
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
# Points sampled per grid_sample call; bounds the memory of one chunk of views (~ 16 bytes each).
_CHUNK_POINTS = 2**23


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """Hounsfield units -> linear attenuation (1/mm), negative values (below air) clipped to 0."""
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """Linear attenuation (1/mm) -> Hounsfield units."""
    return 1000.0 * (mu / mu_water - 1.0)


@dataclass(frozen=True)
class ParallelBeamGeometry:
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
    """

    image_shape: tuple[int, int]
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    n_views: int = 180
    angular_range: float = 180.0
    start_angle: float = 0.0
    n_detectors: Optional[int] = None
    detector_spacing: Optional[float] = None
    ray_step: Optional[float] = None
    view_indices: Optional[tuple[int, ...]] = None
    full_views: Optional[int] = None

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
        object.__setattr__(self, "image_shape", (h, w))
        object.__setattr__(self, "pixel_spacing", (sy, sx))
        object.__setattr__(self, "n_views", int(self.n_views))

    @property
    def det_spacing(self) -> float:
        return float(self.detector_spacing) if self.detector_spacing else min(self.pixel_spacing)

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
        if self.view_indices is not None:
            idx = torch.tensor(self.view_indices, dtype=torch.float64)
            deg = self.start_angle + idx * self.angular_range / self.full_views
        else:
            deg = self.start_angle + torch.arange(self.n_views, dtype=torch.float64) * self.angular_range / self.n_views
        return torch.deg2rad(deg)


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


_GRID_CACHE: dict = {}
_GRID_CACHE_BYTES = 2**30  # sampling grids of the last geometry used, up to 1 GiB


def _cached(key: tuple, make) -> torch.Tensor:
    """Sampling grids are cached for the last geometry used (key[1]): every slice of a volume
    shares it, and building them costs as much as using them."""
    grid = _GRID_CACHE.get(key)
    if grid is None:
        grid = make()
        if not any(k[1] == key[1] for k in _GRID_CACHE):
            _GRID_CACHE.clear()
        used = sum(g.numel() * g.element_size() for g in _GRID_CACHE.values())
        if used + grid.numel() * grid.element_size() <= _GRID_CACHE_BYTES:
            _GRID_CACHE[key] = grid
    return grid


def _grid_parts(device) -> int:
    """Batch entries a sampling grid is split into. The CPU kernels of `grid_sample` (and of its
    backward) parallelise over the batch dimension only, so a grid of batch 1 runs on one core;
    split in `k` parts, the projector runs on `k` threads. CUDA kernels use every point anyway."""
    return max(1, min(torch.get_num_threads(), 8)) if torch.device(device).type == "cpu" else 1


def _split_rows(grid: torch.Tensor, parts: int) -> torch.Tensor:
    """(1, R, S, 2) -> (parts, ceil(R / parts), S, 2), the rows in order; padded with points far
    outside the image, which sample zeros and receive nothing."""
    rows = grid.shape[1]
    per = -(-rows // parts)
    if per * parts > rows:
        grid = torch.cat([grid, grid.new_full((1, per * parts - rows, *grid.shape[2:]), 4.0)], dim=1)
    return grid.reshape(parts, per, *grid.shape[2:])


def _ray_grid(geom: ParallelBeamGeometry, views: slice, device, dtype) -> torch.Tensor:
    """Sample points of the rays of `views` as grid_sample coordinates, the V*D rays split in
    `_grid_parts` batch entries: (k, ceil(V*D / k), S, 2)."""
    k = _grid_parts(device)
    return _cached(("ray", geom, views.start, views.stop, str(device), dtype, k),
                   lambda: _split_rows(_make_ray_grid(geom, views, device, dtype), k))


def _make_ray_grid(geom: ParallelBeamGeometry, views: slice, device, dtype) -> torch.Tensor:
    (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
    theta = geom.angles()[views].to(device)
    n_s = geom.n_samples
    t = (torch.arange(geom.n_det, device=device, dtype=torch.float64) - (geom.n_det - 1) / 2) * geom.det_spacing
    s = (torch.arange(n_s, device=device, dtype=torch.float64) - (n_s - 1) / 2) * geom.step
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    x = t[None, :, None] * cos + s[None, None, :] * sin  # (V, D, S) mm
    y = -t[None, :, None] * sin + s[None, None, :] * cos
    # align_corners=False: -1 and 1 are the outer edges of the border pixels
    grid = torch.stack([x / (w * sx / 2), y / (h * sy / 2)], dim=-1)
    return grid.reshape(1, -1, n_s, 2).to(dtype)


def _view_chunks(geom: ParallelBeamGeometry, batch: int):
    n_s = geom.n_samples
    per_view = geom.n_det * n_s * max(batch, 1)
    size = max(1, _CHUNK_POINTS // per_view)
    for start in range(0, geom.n_views, size):
        yield slice(start, min(start + size, geom.n_views))


def _check_image(image: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
    if image.ndim < 2 or tuple(image.shape[-2:]) != geom.image_shape:
        raise InputError(f"image of shape {tuple(image.shape)} does not match the geometry's {geom.image_shape}")
    return image


def _check_sinogram_shape(sinogram: torch.Tensor, geom: ParallelBeamGeometry, name: str = "sinogram") -> None:
    if sinogram.ndim < 2 or tuple(sinogram.shape[-2:]) != geom.sinogram_shape:
        raise InputError(
            f"{name} of shape {tuple(sinogram.shape)} does not match the geometry: expected (..., views, detectors) "
            f"= (..., {geom.n_views}, {geom.n_det})"
        )


def check_sinogram(sinogram: torch.Tensor, geom: ParallelBeamGeometry, name: str = "sinogram") -> torch.Tensor:
    """An `InputError` unless `sinogram` is (..., n_views, n_detectors) for `geom` and finite."""
    _check_sinogram_shape(sinogram, geom, name)
    if not torch.isfinite(sinogram).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return sinogram


def project(image: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
    """Radon transform: line integrals (image units x mm) of (..., H, W) images -> (..., V, D)."""
    _check_image(image, geom)
    lead = image.shape[:-2]
    x = image.reshape(1, -1, *geom.image_shape)  # slices as channels share one sampling grid
    if not x.is_floating_point():
        x = x.float()
    c, out = x.shape[1], []
    for views in _view_chunks(geom, c):
        grid = _ray_grid(geom, views, x.device, x.dtype)
        samples = F.grid_sample(x.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (k, C, rows / k, S)
        rays = samples.sum(-1).transpose(0, 1).reshape(c, -1)[:, : (views.stop - views.start) * geom.n_det]
        out.append(rays.reshape(c, -1, geom.n_det) * geom.step)
    return torch.cat(out, dim=1).reshape(*lead, geom.n_views, geom.n_det)


def backproject(sinogram: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
    """The exact adjoint of `project`: (..., V, D) -> (..., H, W).

    The adjoint of bilinear sampling is the backward of `grid_sample` with respect to its input;
    called directly (torch.ops.aten.grid_sampler_2d_backward) rather than through autograd, which
    would first run the forward sampling for nothing. Differentiable when the sinogram requires a
    gradient: the gradient of the back-projector is the projector (`_BackProjection`).
    """
    check_sinogram(sinogram, geom)
    if sinogram.requires_grad and torch.is_grad_enabled():
        return _BackProjection.apply(sinogram, geom)
    return _backproject(sinogram, geom)


class _BackProjection(torch.autograd.Function):
    """`backproject` for autograd, its backward the projector (its exact adjoint). Autograd through
    grid_sample's backward kernel would need that kernel's own derivative, which torch 2.11 lacks
    (seen on the GPU machine)."""

    @staticmethod
    def forward(ctx, sinogram: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
        ctx.geom = geom
        return _backproject(sinogram, geom)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return project(grad, ctx.geom), None


def _backproject(sinogram: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
    lead = sinogram.shape[:-2]
    y = sinogram.reshape(-1, geom.n_views, geom.n_det)
    dtype = y.dtype if y.is_floating_point() else torch.float32
    c = y.shape[0]
    out = torch.zeros(c, *geom.image_shape, dtype=dtype, device=y.device)
    for views in _view_chunks(geom, c):
        grid = _ray_grid(geom, views, y.device, dtype)
        k, per = grid.shape[:2]
        weight = (y[:, views].to(dtype) * geom.step).reshape(c, -1)
        weight = F.pad(weight, (0, k * per - weight.shape[1])).reshape(c, k, per).transpose(0, 1)
        weight = weight[..., None].expand(k, c, per, grid.shape[2])  # the same value along each ray
        # only the input's shape matters: a stride-0 tensor on CPU; elsewhere a real one, the
        # arguments autograd passes to this kernel
        shape = torch.zeros((), dtype=dtype, device=y.device).expand(k, c, *geom.image_shape)
        shape = shape if y.device.type == "cpu" else shape.contiguous()
        # interpolation 0 = bilinear, padding 0 = zeros, as in `project`; no gradient for the grid
        grad, _ = torch.ops.aten.grid_sampler_2d_backward(weight, shape, grid, 0, 0, False, [True, False])
        out = out + grad.sum(0)
    return out.reshape(*lead, *geom.image_shape)


def fbp_filter(n_det: int, filter_name: str = "ramp", device=None, dtype=torch.float32) -> torch.Tensor:
    """Frequency response of the FBP filter for a zero-padded detector row: (P,), P a power of 2.

    The ramp is the FFT of the band-limited spatial kernel of Kak & Slaney (ch. 3, eq. 61), which
    avoids the DC error of a sampled |f|; the windows are those of scikit-image's `iradon`.
    """
    if filter_name not in FILTERS:
        raise InputError(f"unknown FBP filter {filter_name!r}: expected one of {', '.join(FILTERS)}")
    size = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
    n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).double()
    kernel = torch.zeros(size, dtype=torch.float64)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (math.pi * n) ** 2
    response = torch.fft.fft(kernel).real  # ~ |f| in cycles per bin on [-1/2, 1/2)
    omega = math.pi * torch.fft.fftfreq(size, dtype=torch.float64)[1:]
    if filter_name == "shepp-logan":
        response[1:] *= torch.sin(omega) / omega
    elif filter_name == "cosine":
        response *= torch.fft.fftshift(torch.sin(torch.linspace(0, math.pi, size + 1, dtype=torch.float64)[:-1]))
    elif filter_name == "hamming":
        response *= torch.fft.fftshift(torch.hamming_window(size, periodic=False, dtype=torch.float64))
    elif filter_name == "hann":
        response *= torch.fft.fftshift(torch.hann_window(size, periodic=False, dtype=torch.float64))
    return response.to(device=device, dtype=dtype)


def filter_sinogram(sinogram: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
    """Convolve each detector row with the FBP filter (zero-padded, so no wrap-around)."""
    n_det = sinogram.shape[-1]
    response = fbp_filter(n_det, filter_name, sinogram.device, torch.float64 if sinogram.dtype == torch.float64 else torch.float32)
    padded = F.pad(sinogram, (0, response.shape[0] - n_det))
    return torch.fft.ifft(torch.fft.fft(padded, dim=-1) * response, dim=-1).real[..., :n_det].to(sinogram.dtype)


def interpolate_backproject(sinogram: torch.Tensor, geom: ParallelBeamGeometry) -> torch.Tensor:
    """Pixel-driven back-projection: each pixel sums, over the views, its detector row linearly
    interpolated at the pixel's position t. The discretisation of the FBP integral that
    scikit-image's `iradon` uses too; several times faster than the adjoint on CPU (a gather, not a
    scatter), hence FBP's default. (..., V, D) -> (..., H, W), no angular or spacing weights."""
    check_sinogram(sinogram, geom)
    (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
    lead = sinogram.shape[:-2]
    q = sinogram.reshape(1, -1, geom.n_views, geom.n_det)
    if not q.is_floating_point():
        q = q.float()
    out = torch.zeros(q.shape[1], h * w, dtype=q.dtype, device=q.device)
    k = _grid_parts(q.device)
    size = max(1, _CHUNK_POINTS // (h * w * max(q.shape[1], 1)))
    size = max(k, size - size % k)  # whole views in each of the k parts
    for start in range(0, geom.n_views, size):
        views = slice(start, min(start + size, geom.n_views))
        grid = _cached(("pixel", geom, views.start, views.stop, str(q.device), q.dtype, k),
                       lambda: _split_rows(_make_pixel_grid(geom, views, q.device, q.dtype), k))
        samples = F.grid_sample(q.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (k, C, views / k, H*W)
        # bilinear in the view direction is exact here: every sample sits on a view's row
        out += samples.sum(2).sum(0)  # (one reduction over two dimensions is 10x slower on CPU)
    return out.reshape(*lead, h, w)


def _make_pixel_grid(geom: ParallelBeamGeometry, views: slice, device, dtype) -> torch.Tensor:
    """(1, v, H*W, 2) grid_sample coordinates of each pixel's detector position in each view."""
    (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
    theta = geom.angles()[views].to(device)
    idx = torch.arange(views.start, views.stop, device=device, dtype=torch.float64)
    x = ((torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2) * sx)[None, :]
    y = ((torch.arange(h, device=device, dtype=torch.float64) - (h - 1) / 2) * sy)[:, None]
    t = x * torch.cos(theta)[:, None, None] - y * torch.sin(theta)[:, None, None]  # (v, H, W) mm
    u = t / geom.det_spacing + (geom.n_det - 1) / 2  # detector index
    gx = (2 * u + 1) / geom.n_det - 1  # align_corners=False
    gy = ((2 * idx + 1) / geom.n_views - 1)[:, None, None].expand_as(gx)
    return torch.stack([gx, gy], dim=-1).reshape(1, len(idx), h * w, 2).to(dtype)


def fbp(sinogram: torch.Tensor, geom: ParallelBeamGeometry, filter_name: str = "ramp") -> torch.Tensor:
    """Filtered back-projection of (..., V, D) line integrals -> (..., H, W) in the sinogram's units / mm.

    f(x, y) = dtheta * sum over views of q_theta(x cos theta - y sin theta), q the filtered
    projection (the filter carries 1 / detector spacing), dtheta = pi / n_views for views over
    180 degrees (360 degrees cover each line twice: half of 2 pi / n_views).
    """
    check_sinogram(sinogram, geom)
    filtered = filter_sinogram(sinogram, filter_name)
    dtheta = math.radians(min(geom.angular_range, 180.0)) / geom.n_views
    return interpolate_backproject(filtered, geom) * (dtheta / geom.det_spacing)


def check_dose(incident_photons: float, electronic_noise: float) -> None:
    """An `InputError` for a non-positive photon count or a negative electronic noise."""
    if not (incident_photons > 0 and math.isfinite(incident_photons)):
        raise InputError(f"incident photon count I0 must be positive, got {incident_photons}")
    if not (electronic_noise >= 0 and math.isfinite(electronic_noise)):
        raise InputError(f"electronic noise (counts) must be >= 0, got {electronic_noise}")


def transmitted_counts(
    line_integrals: torch.Tensor,
    incident_photons: float,
    electronic_noise: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Detected counts of a low-dose scan: Poisson(I0 exp(-p)) plus Gaussian electronic noise."""
    check_dose(incident_photons, electronic_noise)
    expected = incident_photons * torch.exp(-line_integrals.double())
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise > 0:
        counts = counts + electronic_noise * torch.randn(
            counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
        )
    return counts


def counts_to_line_integrals(counts: torch.Tensor, incident_photons: float, min_count: float = 1.0) -> torch.Tensor:
    """Log transform -log(N / I0); counts below `min_count` (zero or negative after electronic
    noise) are raised to it first, as scanners do, so the logarithm stays finite."""
    if min_count <= 0:
        raise InputError(f"min_count must be positive, got {min_count}")
    return -torch.log(counts.clamp_min(min_count) / incident_photons)


def low_dose(
    line_integrals: torch.Tensor,
    incident_photons: float,
    electronic_noise: float = 0.0,
    generator: Optional[torch.Generator] = None,
    min_count: float = 1.0,
) -> torch.Tensor:
    """Noisy line integrals of a scan with `incident_photons` per detector bin (same dtype)."""
    counts = transmitted_counts(line_integrals, incident_photons, electronic_noise, generator)
    return counts_to_line_integrals(counts, incident_photons, min_count).to(line_integrals.dtype)


_NORM_CACHE: dict = {}


def _operator_pair(geom: ParallelBeamGeometry, matrix: Optional["SystemMatrix"]):
    """(A, A^T) as callables on tensors: the matrix's products, or the sampling operators."""
    if matrix is not None:
        return matrix.project, matrix.backproject
    return partial(project, geom=geom), partial(backproject, geom=geom)


def normal_operator_norm(geom: ParallelBeamGeometry, device=None, iterations: int = 10,
                         operator: Optional["SystemMatrix"] = None) -> float:
    """The largest eigenvalue of A^T A (A = `project`) by power iteration from a fixed start,
    cached per geometry and device: the scale that makes data-consistency weights dimensionless.
    `operator`: the same A as a `SystemMatrix`, faster (the value agrees to float rounding)."""
    key = (geom, str(device))
    if key not in _NORM_CACHE:
        proj, back = _operator_pair(geom, operator)
        v = torch.ones(1, *geom.image_shape, device=device)
        norm = torch.ones(())
        for _ in range(iterations):
            v = back(proj(v))
            norm = v.norm()
            v = v / norm
        if len(_NORM_CACHE) > 64:
            _NORM_CACHE.clear()
        _NORM_CACHE[key] = float(norm)
    return _NORM_CACHE[key]


_MATRIX_CACHE: dict = {}
_MATRIX_WORK: dict = {}  # slices x (CG iterations + 1) run so far per geometry
_MATRIX_FAILED: set = set()  # devices where building or applying the matrices failed
_MATRIX_BYTES = 2**31  # bound on the two matrices of one geometry: larger ones are not built
# The matrices are built once the work done with a geometry, this call's included, reaches this
# many slices x (CG iterations + 1), i.e. once the sampling operators would have cost about as much
# as the build (as in renting skis until their price is spent): on the 2-core CPU a 512 x 512,
# 60-view geometry takes about 10 s to build, two slices' worth of 12-iteration consistency steps
# with the sampling operators (4.6 s per slice), 0.3 s per slice with the matrices. Evaluation calls
# it slice by slice, so the work is counted over calls.
_MATRIX_MIN_WORK = 36
_MATRIX_CHUNK_POINTS = 2**21  # ray sample points per chunk of the build (about 160 bytes each)


class SystemMatrix:
    """`project` as an explicit sparse matrix A (rays x pixels, CSR, int32 indices) and its
    transpose (CSR too), for solvers that apply A and A^T many times with one geometry.

    The weights are those of `project`'s sampling: every `step` mm along each ray, the four
    bilinear weights of `grid_sample` (align_corners=False, zeros outside), summed per pixel and
    scaled by the step. So `SystemMatrix(g).project(x)` is `project(x, g)` and `.backproject(y)` is
    `backproject(y, g)` to float rounding (tests), but without recomputing the weights at each
    call and without scattering: the adjoint is a product with the stored transpose. Written here
    because neither torch nor MONAI builds a CT system matrix; the build sorts each ray's samples
    by pixel, then all entries by pixel for the transpose, in chunks of views.

    Memory: about 2.2 entries per pixel and view in each matrix, 8 bytes each (e.g. 560 MB for
    512 x 512 pixels and 60 views); `bytes_bound` is the bound checked before building.
    """

    def __init__(self, geom: ParallelBeamGeometry, device=None, dtype=torch.float32) -> None:
        self.geom = geom
        (h, w), n_rays = geom.image_shape, geom.n_views * geom.n_det
        counts, cols, vals = [], [], []
        per_chunk = max(1, _MATRIX_CHUNK_POINTS // (geom.n_det * geom.n_samples))
        for start in range(0, geom.n_views, per_chunk):
            c, col, val = self._rows(slice(start, min(start + per_chunk, geom.n_views)), device, dtype)
            counts.append(c)
            cols.append(col)
            vals.append(val)
        counts, col, val = torch.cat(counts), torch.cat(cols), torch.cat(vals) * geom.step
        zero = counts.new_zeros(1)
        # the transpose: the same entries ordered by pixel (stable: by ray within each pixel)
        order = torch.argsort(col, stable=True)
        rows = torch.repeat_interleave(torch.arange(n_rays, device=col.device, dtype=torch.int32), counts)
        per_pixel = torch.bincount(col, minlength=h * w)
        with warnings.catch_warnings():  # torch's notes that sparse CSR is "beta" and unchecked: noise here
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.sparse_csr_tensor(torch.cat([zero, counts.cumsum(0)]).int(), col, val, (n_rays, h * w))
            self.transpose = torch.sparse_csr_tensor(torch.cat([zero, per_pixel.cumsum(0)]).int(), rows[order],
                                                     val[order], (h * w, n_rays))

    @staticmethod
    def bytes_bound(geom: ParallelBeamGeometry) -> int:
        """An upper bound of the two matrices' bytes: each sample point inside the image gives at
        most four entries of 8 bytes (value, column) in each matrix."""
        (h, w), (sy, sx) = geom.image_shape, geom.pixel_spacing
        samples = geom.n_views * (h * sy + 2 * geom.step) * (w * sx + 2 * geom.step) / (geom.step * geom.det_spacing)
        return int(2 * 4 * 8 * samples)

    def _rows(self, views: slice, device, dtype):
        """Per ray of `views`: the number of pixels it touches, their indices (sorted) and weights."""
        (h, w) = self.geom.image_shape
        grid = _make_ray_grid(self.geom, views, device, dtype)[0]  # (rays, S, 2)
        ix = ((grid[..., 0] + 1) * w - 1) / 2  # grid_sample's pixel coordinates (align_corners=False)
        iy = ((grid[..., 1] + 1) * h - 1) / 2
        x0, y0 = ix.floor(), iy.floor()
        fx, fy = ix - x0, iy - y0
        x0, y0 = x0.int(), y0.int()
        outside = torch.iinfo(torch.int32).max  # sorts after every pixel
        keys, weights = [], []
        for dy, dx, wt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
            xx, yy = x0 + dx, y0 + dy
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h) & (wt > 0)
            keys.append(torch.where(inside, yy * w + xx, outside))
            weights.append(torch.where(inside, wt, 0))
        key, order = torch.cat(keys, 1).sort(dim=1)  # each ray's entries by pixel
        weight = torch.cat(weights, 1).gather(1, order)
        first = torch.ones_like(key, dtype=torch.bool)  # the first entry of each pixel in its ray
        first[:, 1:] = key[:, 1:] != key[:, :-1]
        first &= key != outside
        valid = (key != outside).reshape(-1)
        entry = first.reshape(-1).cumsum(0) - 1  # the (row-major) matrix entry each sample adds to
        val = weight.new_zeros(int(entry[-1]) + 1).index_add_(0, entry[valid], weight.reshape(-1)[valid])
        return first.sum(1), key.reshape(-1)[first.reshape(-1)], val

    def project(self, image: torch.Tensor) -> torch.Tensor:
        """(..., H, W) -> (..., V, D), as `project`."""
        _check_image(image, self.geom)
        flat = image.reshape(-1, image.shape[-2] * image.shape[-1]).to(self.matrix.dtype)
        return (self.matrix @ flat.T).T.reshape(*image.shape[:-2], *self.geom.sinogram_shape)

    def backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """(..., V, D) -> (..., H, W), as `backproject` (the shape checked; finiteness is the caller's)."""
        _check_sinogram_shape(sinogram, self.geom)
        flat = sinogram.reshape(-1, self.geom.n_views * self.geom.n_det).to(self.matrix.dtype)
        return (self.transpose @ flat.T).T.reshape(*sinogram.shape[:-2], *self.geom.image_shape)


def system_matrix(geom: ParallelBeamGeometry, device=None, dtype=torch.float32, work: Optional[int] = None):
    """The `SystemMatrix` of `geom`, cached for the last geometry used.

    `work`: the slices x (CG iterations + 1) about to run with it; they are added to the work done
    with this geometry, and an uncached matrix is built only once that reaches `_MATRIX_MIN_WORK`
    (None: build now). None is returned where the matrix is not (yet) built, where it would exceed
    `_MATRIX_BYTES`, or where sparse products fail on this device (e.g. out of memory, or a torch
    build without them): then a one-line warning, and the callers keep the sampling operators for
    that device."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (geom, str(device), dtype)
    if work is not None:
        if len(_MATRIX_WORK) > 64:
            _MATRIX_WORK.clear()
        _MATRIX_WORK[key] = _MATRIX_WORK.get(key, 0) + work
    if key not in _MATRIX_CACHE:
        if work is not None and _MATRIX_WORK[key] < _MATRIX_MIN_WORK:
            return None
        if str(device) in _MATRIX_FAILED or SystemMatrix.bytes_bound(geom) > _MATRIX_BYTES:
            return None
        _MATRIX_CACHE.clear()  # one geometry at a time: the matrices are large
        try:
            with torch.no_grad():
                matrix = SystemMatrix(geom, device, dtype)
                matrix.backproject(matrix.project(torch.zeros(1, *geom.image_shape, device=device, dtype=dtype)))
        except (RuntimeError, NotImplementedError) as err:  # torch.OutOfMemoryError is a RuntimeError
            _MATRIX_FAILED.add(str(device))
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            warnings.warn(f"CT data consistency: no sparse system matrix on {device} ({first_line}); "
                          "using the sampling projector instead (slower, the same result)", RuntimeWarning)
            return None
        _MATRIX_CACHE[key] = matrix
    return _MATRIX_CACHE[key]


def check_consistency_settings(
    weight, iterations, names: tuple[str, str] = ("data-consistency weight", "data-consistency iterations")
) -> tuple[float, int]:
    """(weight, iterations) as (float >= 0, int >= 0), else an `InputError` with `names` (the
    config keys where they come from a config)."""
    try:
        w, n = float(weight), int(iterations)
    except (TypeError, ValueError):
        raise InputError(f"{names[0]} and {names[1]} must be numbers, got {weight!r}, {iterations!r}") from None
    if not (w >= 0 and math.isfinite(w)):
        raise InputError(f"{names[0]} must be >= 0, got {weight!r}")
    if n != iterations or n < 0:
        raise InputError(f"{names[1]} must be a whole number >= 0, got {iterations!r}")
    return w, n


def sinogram_consistency(
    image: torch.Tensor, sinogram: torch.Tensor, geom: ParallelBeamGeometry, weight: float = 1e-3, iterations: int = 12
) -> torch.Tensor:
    """Data consistency for CT: the image closest to `image` (x0, e.g. a network's output) that
    agrees with the measured `sinogram` y,

        argmin_x ||A x - y||^2 + lam ||x - x0||^2,   lam = weight * ||A^T A||,

    by `iterations` conjugate-gradient steps from x0 on the normal equations, each slice on its
    own. A small weight keeps x0 where the scan says nothing (the null space of a sparse-view A)
    and replaces it by what the scan measured elsewhere; early stopping regularises further. With
    noisy (low-dose) scans use a larger weight, or the noise comes back. The k-space analogue is
    `bundle.kspace.data_consistency`; nothing in MONAI projects CT data, hence this solver.
    Once the slices x (iterations + 1) run with a geometry reach `_MATRIX_MIN_WORK` (this call's
    included), A and A^T are applied as a `SystemMatrix`: the same operator, several times faster.

    Args:
        image: (..., H, W) linear attenuation (1/mm), the starting point and prior x0.
        sinogram: (..., V, D) measured line integrals for `geom`.
        weight: lam relative to the largest eigenvalue of A^T A (dimensionless, >= 0).
        iterations: conjugate-gradient steps (0 returns `image`).
    """
    weight, iterations = check_consistency_settings(weight, iterations)
    _check_image(image, geom)
    check_sinogram(sinogram, geom)
    if iterations == 0:
        return image
    x0 = image if image.dtype in (torch.float32, torch.float64) else image.float()
    # the operators as a sparse matrix when they are applied often enough to repay building it
    # (and nothing needs a gradient through them); else the sampling operators
    slices = x0.numel() // (geom.image_shape[0] * geom.image_shape[1])
    graph = torch.is_grad_enabled() and (x0.requires_grad or sinogram.requires_grad)
    matrix = None if graph else system_matrix(geom, x0.device, x0.dtype, work=slices * (iterations + 1))
    proj, back = _operator_pair(geom, matrix)
    lam = float(weight) * normal_operator_norm(geom, x0.device, operator=matrix)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return back(proj(v)) + lam * v

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # one value per slice
        return (a * b).sum((-2, -1), keepdim=True)

    x = x0.clone()
    r = back(sinogram.to(x0) - proj(x0))  # b - N x0 (the lam terms cancel)
    p, rs = r.clone(), dot(r, r)
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(iterations):
        ap = normal(p)
        curvature = dot(p, ap)
        alpha = torch.where(curvature > 0, rs / curvature.clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = dot(r, r)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return x.to(image.dtype)
