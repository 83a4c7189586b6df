"""CT physics in torch: Hounsfield units, the parallel-beam geometry, its matched projector /
back-projector pair as an operator, and filtered back-projection.

Batched over slices, differentiable, on CPU or GPU. Written here because neither MONAI nor the
required packages ship a Radon transform (scikit-image's `radon`/`iradon` are NumPy, one image at a
time, and serve only as the reference in the tests).

The geometry's conventions are in `bundle.physics.ct_geometry`. Each ray's line integral is
sampled every `ray_step` mm with bilinear interpolation (Joseph-style, via `grid_sample`). The
back-projector is the exact adjoint of that projector (the backward kernel of the same
`grid_sample`), so <A x, y> = <x, A^T y> to float precision. Solvers that apply both many times
use the same operator as an explicit sparse matrix (`bundle.physics.ct_matrix`), which the
projector builds and keeps once the work done with it repays the build.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.physics.ct_geometry import (
    MU_WATER,
    ParallelBeamGeometry,
    check_image,
    check_sinogram,
    hu_to_mu,
    make_pixel_grid,
    mu_to_hu,
    sparse_view_geometry,
)
from bundle.physics.ct_matrix import SystemMatrix
from bundle.physics.operator import LinearOperator
from bundle.physics.solvers import check_regularisation, regularised_least_squares

__all__ = (
    "FILTERS", "MU_WATER", "ParallelBeamGeometry", "ParallelBeamProjector", "fbp_filter", "filter_sinogram",
    "hu_to_mu", "mu_to_hu", "sinogram_consistency", "sparse_view_geometry",
)
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
# Points sampled per grid_sample call; bounds the memory of one chunk of views (~ 16 bytes each).
CHUNK_POINTS = 2**23
GRID_CACHE_BYTES = 2**30  # a projector keeps its sampling grids up to 1 GiB
def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where it cannot be read."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _matrix_bytes() -> int:
    """The bound on a geometry's two sparse matrices (larger ones are not built): a quarter of this
    machine's memory, at most 8 GiB (2 GiB where the memory cannot be read). 181 views of a
    512 x 512 grid bound at 3 GiB (1.7 GiB built): solvers on limited-angle measured scans need it."""
    total = physical_memory()
    return 2**31 if total is None else int(min(2**33, total // 4))


MATRIX_BYTES = _matrix_bytes()
# The matrices are built once the work done with a projector, the current call's included, reaches
# this many slices x (CG iterations + 1): about the work that costs as much with the sampling
# operators as the build (renting skis until their price is spent; measurements in docs/benchmarks.md).
MATRIX_MIN_WORK = 36


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


def _view_chunks(geom: ParallelBeamGeometry, batch: int):
    n_s = geom.n_samples
    per_view = geom.n_det * n_s * max(batch, 1)
    size = max(1, CHUNK_POINTS // per_view)
    for start in range(0, geom.n_views, size):
        yield slice(start, min(start + size, geom.n_views))


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



class _BackProjection(torch.autograd.Function):
    """`A_adjoint` for autograd, its backward the projector (its exact adjoint). Autograd through
    grid_sample's backward kernel would need that kernel's own derivative, which torch lacks."""

    @staticmethod
    def forward(ctx, sinogram: torch.Tensor, projector: ParallelBeamProjector) -> torch.Tensor:
        ctx.projector = projector
        return projector._backproject(sinogram)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.projector.A(grad), None


class ParallelBeamProjector(LinearOperator):
    """The Radon transform of a `ParallelBeamGeometry` as an operator.

    Shapes: A: images (..., H, W) in 1/mm -> line integrals (..., V, D); A_adjoint: (..., V, D) ->
    (..., H, W), the exact adjoint (adjoint test in the tests); `fbp`: (..., V, D) -> (..., H, W).

    The projector owns what it computes once and reuses: the sampling grids of its rays and pixels
    (up to `GRID_CACHE_BYTES`), ||A^T A|| per device (`norm`), and the sparse system matrix
    (`system_matrix`) with the work done so far that decides when to build it. Nothing is shared
    between projectors; `release()` drops the large caches and keeps the small ones.
    """

    def __init__(self, geom: ParallelBeamGeometry) -> None:
        super().__init__()
        self.geom = geom
        self.image_shape = geom.image_shape
        self._grids: dict[tuple, torch.Tensor] = {}
        self._matrices: dict[tuple, SystemMatrix] = {}
        self._work: dict[tuple, int] = {}
        self._failed_devices: set[str] = set()

    def release(self) -> None:
        """Drop the sampling grids and system matrices (memory); norms and work counts stay."""
        self._grids.clear()
        self._matrices.clear()

    def _cached_grid(self, key: tuple, make) -> torch.Tensor:
        grid = self._grids.get(key)
        if grid is None:
            grid = make()
            used = sum(g.numel() * g.element_size() for g in self._grids.values())
            if used + grid.numel() * grid.element_size() <= GRID_CACHE_BYTES:
                self._grids[key] = grid
        return grid

    def _ray_grid(self, views: slice, device, dtype) -> torch.Tensor:
        """Sample points of the rays of `views` as grid_sample coordinates, the V*D rays split in
        `_grid_parts` batch entries: (k, ceil(V*D / k), S, 2)."""
        k = _grid_parts(device)
        return self._cached_grid(("ray", views.start, views.stop, str(device), dtype, k),
                                 lambda: _split_rows(self.geom.ray_grid(views, device, dtype), k))

    def A(self, image: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Line integrals (image units x mm) of (..., H, W) images -> (..., V, D)."""
        geom = self.geom
        check_image(image, geom)
        lead = image.shape[:-2]
        x = image.reshape(1, -1, *geom.image_shape)  # slices as channels share one sampling grid
        if not x.is_floating_point():
            x = x.float()
        c, out = x.shape[1], []
        for views in _view_chunks(geom, c):
            grid = self._ray_grid(views, x.device, x.dtype)
            samples = F.grid_sample(x.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (k, C, rows / k, S)
            rays = samples.sum(-1).transpose(0, 1).reshape(c, -1)[:, : (views.stop - views.start) * geom.n_det]
            out.append(rays.reshape(c, -1, geom.n_det) * geom.step)
        return torch.cat(out, dim=1).reshape(*lead, geom.n_views, geom.n_det)

    def A_adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """The exact adjoint of `A`: (..., V, D) -> (..., H, W).

        The adjoint of bilinear sampling is the backward of `grid_sample` with respect to its input;
        called directly (torch.ops.aten.grid_sampler_2d_backward) rather than through autograd, which
        would first run the forward sampling for nothing. Differentiable when the sinogram requires a
        gradient: the gradient of the back-projector is the projector (`_BackProjection`).
        """
        check_sinogram(sinogram, self.geom)
        if sinogram.requires_grad and torch.is_grad_enabled():
            return _BackProjection.apply(sinogram, self)
        return self._backproject(sinogram)

    def _backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        geom = self.geom
        lead = sinogram.shape[:-2]
        y = sinogram.reshape(-1, geom.n_views, geom.n_det)
        dtype = y.dtype if y.is_floating_point() else torch.float32
        c = y.shape[0]
        out = torch.zeros(c, *geom.image_shape, dtype=dtype, device=y.device)
        for views in _view_chunks(geom, c):
            grid = self._ray_grid(views, y.device, dtype)
            k, per = grid.shape[:2]
            weight = (y[:, views].to(dtype) * geom.step).reshape(c, -1)
            weight = F.pad(weight, (0, k * per - weight.shape[1])).reshape(c, k, per).transpose(0, 1)
            weight = weight[..., None].expand(k, c, per, grid.shape[2])  # the same value along each ray
            # only the input's shape matters: a stride-0 tensor on CPU; elsewhere a real one, the
            # arguments autograd passes to this kernel
            shape = torch.zeros((), dtype=dtype, device=y.device).expand(k, c, *geom.image_shape)
            shape = shape if y.device.type == "cpu" else shape.contiguous()
            # interpolation 0 = bilinear, padding 0 = zeros, as in `A`; no gradient for the grid
            grad, _ = torch.ops.aten.grid_sampler_2d_backward(weight, shape, grid, 0, 0, False, [True, False])
            out = out + grad.sum(0)
        return out.reshape(*lead, *geom.image_shape)

    def interpolate_backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Pixel-driven back-projection: each pixel sums, over the views, its detector row linearly
        interpolated at the pixel's position t. The discretisation of the FBP integral that
        scikit-image's `iradon` uses too; faster than the adjoint on CPU (a gather, not a
        scatter), hence FBP's. (..., V, D) -> (..., H, W), no angular or spacing weights."""
        geom = self.geom
        check_sinogram(sinogram, geom)
        (h, w) = geom.image_shape
        lead = sinogram.shape[:-2]
        q = sinogram.reshape(1, -1, geom.n_views, geom.n_det)
        if not q.is_floating_point():
            q = q.float()
        out = torch.zeros(q.shape[1], h * w, dtype=q.dtype, device=q.device)
        k = _grid_parts(q.device)
        size = max(1, CHUNK_POINTS // (h * w * max(q.shape[1], 1)))
        size = max(k, size - size % k)  # whole views in each of the k parts
        for start in range(0, geom.n_views, size):
            views = slice(start, min(start + size, geom.n_views))
            grid = self._cached_grid(("pixel", views.start, views.stop, str(q.device), q.dtype, k),
                                     lambda views=views: _split_rows(make_pixel_grid(geom, views, q.device, q.dtype), k))
            samples = F.grid_sample(q.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (k, C, views / k, H*W)
            # bilinear in the view direction is exact here: every sample sits on a view's row
            out += samples.sum(2).sum(0)  # (one reduction over two dimensions is much slower on CPU)
        return out.reshape(*lead, h, w)

    def fbp(self, sinogram: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
        """Filtered back-projection of (..., V, D) line integrals -> (..., H, W) in the sinogram's units / mm.

        f(x, y) = sum over views of dtheta_v q_v(x cos theta - y sin theta), q the filtered
        projection (the filter carries 1 / detector spacing), dtheta_v the view's angular weight
        (`ParallelBeamGeometry.view_weights`): pi / n_views for views evenly over 180 degrees, and
        over 360 degrees half of 2 pi / n_views (each line is measured twice).
        """
        geom = self.geom
        check_sinogram(sinogram, geom)
        filtered = filter_sinogram(sinogram, filter_name)
        weights = (geom.view_weights() / geom.det_spacing).to(filtered.device, filtered.dtype)
        return self.interpolate_backproject(filtered * weights[:, None])

    def system_matrix(self, device=None, dtype=torch.float32, work: int | None = None) -> SystemMatrix | None:
        """This geometry's `SystemMatrix` on `device`, built once and kept.

        `work`: the slices x (CG iterations + 1) about to run with it; they are added to the work
        done with this projector, and the matrix is built only once that reaches `MATRIX_MIN_WORK`
        (None: build now). None is returned where the matrix is not (yet) built, where it would
        exceed `MATRIX_BYTES`, or where sparse products fail on this device (e.g. out of memory, or
        a torch build without them): then a one-line warning, and the caller keeps the sampling
        operators for that device."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (str(device), dtype)
        if work is not None:
            self._work[key] = self._work.get(key, 0) + work
        if key not in self._matrices:
            if work is not None and self._work[key] < MATRIX_MIN_WORK:
                return None
            if str(device) in self._failed_devices or SystemMatrix.bytes_bound(self.geom) > MATRIX_BYTES:
                return None
            self._matrices.clear()  # one device and dtype at a time: the matrices are large
            try:
                with torch.no_grad():
                    matrix = SystemMatrix(self, device, dtype)
                    matrix.A_adjoint(matrix.A(torch.zeros(1, *self.geom.image_shape, device=device, dtype=dtype)))
            except (RuntimeError, NotImplementedError) as err:  # torch.OutOfMemoryError is a RuntimeError
                self._failed_devices.add(str(device))
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                warnings.warn(f"CT data consistency: no sparse system matrix on {device} ({first_line}); "
                              "using the sampling projector instead (slower, the same result)", RuntimeWarning,
                              stacklevel=2)
                return None
            self._matrices[key] = matrix
        return self._matrices[key]

    def fast_operator(self, device, dtype, work: int) -> LinearOperator:
        """The operator to apply `work` slices x (iterations + 1) times: the system matrix once it
        repays its build, else the projector itself. Both are the same A to float rounding and
        share this projector's norm."""
        matrix = self.system_matrix(device, dtype, work=work)
        return matrix if matrix is not None else self


def sinogram_consistency(
    image: torch.Tensor, sinogram: torch.Tensor, projector: ParallelBeamProjector, weight: float = 1e-3,
    iterations: int = 12,
) -> torch.Tensor:
    """Data consistency for CT: the image closest to `image` (x0, e.g. a network's output) that
    agrees with the measured `sinogram` y,

        argmin_x ||A x - y||^2 + lam ||x - x0||^2,   lam = weight * ||A^T A||,

    by `iterations` conjugate-gradient steps (`regularised_least_squares`), each slice on its own.
    A small weight keeps x0 where the scan says nothing (the null space of a sparse-view A) and
    replaces it by what the scan measured elsewhere. With noisy (low-dose) scans use a larger
    weight, or the noise comes back. The k-space analogue is `bundle.physics.mri.data_consistency`.
    A is applied as the projector's sparse matrix once the work repays its build (and nothing needs
    a gradient through the solve): the same operator, several times faster.

    Args:
        image: (..., H, W) linear attenuation (1/mm), the starting point and prior x0.
        sinogram: (..., V, D) measured line integrals for the projector's geometry.
        weight: lam relative to the largest eigenvalue of A^T A (dimensionless, >= 0).
        iterations: conjugate-gradient steps (0 returns `image`).
    """
    weight, iterations = check_regularisation(weight, iterations)
    geom = projector.geom
    check_image(image, geom)
    check_sinogram(sinogram, geom)
    if iterations == 0:
        return image
    x0 = image if image.dtype in (torch.float32, torch.float64) else image.float()
    slices = x0.numel() // (geom.image_shape[0] * geom.image_shape[1])
    graph = torch.is_grad_enabled() and (x0.requires_grad or sinogram.requires_grad)
    op = projector if graph else projector.fast_operator(x0.device, x0.dtype, work=slices * (iterations + 1))
    lam = float(weight) * op.norm(x0.device)
    return regularised_least_squares(op, sinogram, x0, lam, iterations).to(image.dtype)
