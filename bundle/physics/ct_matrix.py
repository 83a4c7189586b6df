"""The parallel-beam projector as an explicit sparse matrix (CSR) and its transpose, for solvers
that apply A and A^T many times with one geometry. Pure torch."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from bundle.physics.ct_geometry import ParallelBeamGeometry, check_image, check_sinogram_shape
from bundle.physics.operator import LinearOperator

if TYPE_CHECKING:
    from bundle.physics.ct import ParallelBeamProjector

MATRIX_CHUNK_POINTS = 2**21  # ray sample points per chunk of the build (about 160 bytes each)


class SystemMatrix(LinearOperator):
    """A `ParallelBeamProjector`'s A as an explicit sparse matrix (rays x pixels, CSR, int32 indices) and its
    transpose (CSR too), for solvers that apply A and A^T many times with one geometry.

    Shapes as the projector's: A (..., H, W) -> (..., V, D), A_adjoint (..., V, D) -> (..., H, W).
    The weights are those of the projector's sampling: every `step` mm along each ray, the four
    bilinear weights of `grid_sample` (align_corners=False, zeros outside), summed per pixel and
    scaled by the step. So `SystemMatrix(p).A(x)` is `p.A(x)` and `.A_adjoint(y)` is
    `p.A_adjoint(y)` to float rounding (tests), but without recomputing the weights at each
    call and without scattering: the adjoint is a product with the stored transpose. It shares the
    projector's norm. Written here
    because neither torch nor MONAI builds a CT system matrix; the build sorts each ray's samples
    by pixel, then all entries by pixel for the transpose, in chunks of views.

    Memory: about 2.2 entries per pixel and view in each matrix, 8 bytes each (e.g. 560 MB for
    512 x 512 pixels and 60 views); `bytes_bound` is the bound checked before building.
    """

    def __init__(self, projector: ParallelBeamProjector, device=None, dtype=torch.float32) -> None:
        super().__init__()
        geom = projector.geom
        self.geom = geom
        self.image_shape = geom.image_shape
        self._norms = projector._norms  # the same operator: one norm, whichever computed it first
        (h, w), n_rays = geom.image_shape, geom.n_views * geom.n_det
        count_parts, cols, vals = [], [], []
        per_chunk = max(1, MATRIX_CHUNK_POINTS // (geom.n_det * geom.n_samples))
        for start in range(0, geom.n_views, per_chunk):
            c, col, val = self._rows(slice(start, min(start + per_chunk, geom.n_views)), device, dtype)
            count_parts.append(c)
            cols.append(col)
            vals.append(val)
        counts, col, val = torch.cat(count_parts), torch.cat(cols), torch.cat(vals) * geom.step
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
        grid = self.geom.ray_grid(views, device, dtype)[0]  # (rays, S, 2)
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

    def A(self, image: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """(..., H, W) -> (..., V, D), as the projector's `A`."""
        check_image(image, self.geom)
        flat = image.reshape(-1, image.shape[-2] * image.shape[-1]).to(self.matrix.dtype)
        return (self.matrix @ flat.T).T.reshape(*image.shape[:-2], *self.geom.sinogram_shape)

    def A_adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """(..., V, D) -> (..., H, W), as the projector's `A_adjoint` (the shape checked; finiteness is the caller's)."""
        check_sinogram_shape(sinogram, self.geom)
        flat = sinogram.reshape(-1, self.geom.n_views * self.geom.n_det).to(self.matrix.dtype)
        return (self.transpose @ flat.T).T.reshape(*sinogram.shape[:-2], *self.geom.image_shape)
