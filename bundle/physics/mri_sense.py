"""Multi-coil Cartesian MRI: the SENSE operator, coil sensitivities from the autocalibration lines,
simulated birdcage sensitivities, root-sum-of-squares and CG-SENSE. Pure torch, complex tensors.

Conventions as in `bundle.physics.mri`: images (..., H, W), k-space lines are the columns of the
last axis, centred orthonormal FFTs. Coils are the axis just before (H, W): k-space (..., C, H, W).
"""

from __future__ import annotations

import math

import torch

from bundle.errors import InputError
from bundle.physics.mri import apply_mask, fft2c, ifft2c
from bundle.physics.operator import LinearOperator
from bundle.physics.solvers import l1_wavelet_least_squares, regularised_least_squares


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination over `dim` (the coil axis)."""
    return coil_images.abs().pow(2).sum(dim).sqrt()


def norm_per_pixel(kspace: torch.Tensor) -> torch.Tensor:
    """The k-space norm per pixel of (..., C, H, W) k-space, one value per leading index (..., ),
    at least 1e-12: the scale that makes reconstruction weights independent of the scanner's."""
    n = kspace.shape[-2] * kspace.shape[-1]
    return (kspace.abs().pow(2).sum(dim=(-3, -2, -1)) / n).sqrt().clamp_min(1e-12)


class CartesianSense(LinearOperator):
    """Multi-coil Cartesian MRI: A = M F S, a complex image to the acquired k-space of every coil.

    Shapes: x (..., H, W) complex image -> y (..., C, H, W) complex k-space (zero off the mask);
    A^H y = sum_c conj(S_c) F^H M y_c, the exact adjoint (adjoint test in the tests). With maps
    normalised so that sum_c |S_c|^2 = 1 (`estimate_sensitivities`), ||A^H A|| <= 1.

    Args:
        maps: (..., C, H, W) complex coil sensitivities, broadcastable against the k-space.
        mask: (W,) or broadcastable (..., 1, W) acquired lines (or (H, W) samples).
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        if maps.ndim < 3:
            raise InputError(f"coil sensitivities must be (..., coils, H, W), got shape {tuple(maps.shape)}")
        if mask.shape[-1] != maps.shape[-1]:
            raise InputError(f"the mask has {mask.shape[-1]} lines but the sensitivities are {maps.shape[-1]} wide")
        self.maps = maps
        self.mask = mask
        self.image_shape = (int(maps.shape[-2]), int(maps.shape[-1]))

    def norm_start(self, device: torch.device | str | None) -> torch.Tensor:
        return torch.ones(1, *self.image_shape, device=device, dtype=self.maps.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return apply_mask(fft2c(x.unsqueeze(-3) * self.maps), self.mask)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return (self.maps.conj() * ifft2c(apply_mask(y, self.mask))).sum(-3)


def acs_bounds(mask: torch.Tensor) -> tuple[int, int]:
    """[start, stop) of the fully sampled block of lines around the centre of a (W,) mask (the
    autocalibration signal); for an (..., H, W) mask, of the lines acquired on every row. An
    `InputError` when the centre line itself is not acquired."""
    lines = mask.reshape(-1, mask.shape[-1]).bool().all(0) if mask.ndim > 1 else mask.bool()
    centre = lines.shape[0] // 2
    if not bool(lines[centre]):
        raise InputError("no fully sampled k-space centre: coil sensitivities cannot be estimated from the data")
    return _run(lines, centre)


def _run(values: torch.Tensor, centre: int) -> tuple[int, int]:
    """[start, stop) of the run of True around `centre` in a 1D boolean tensor."""
    start, stop = centre, centre + 1
    while start > 0 and bool(values[start - 1]):
        start -= 1
    while stop < values.shape[0] and bool(values[stop]):
        stop += 1
    return start, stop


def acs_window(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The autocalibration region of a mask as an (H, W) real 0/1 window on the k-space grid.

    A (W,) line mask (or (..., 1, W)): the block of acquired lines around the centre, every row.
    An (H, W) sample mask (e.g. Poisson disc, or lines on part of the rows): the largest centred
    box that is fully acquired, grown from the runs through the centre row and column and shrunk
    until every sample in it is acquired. An `InputError` when the k-space centre is not acquired.
    """
    h, w = shape
    m = mask.bool()
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 1 or m.shape[-2] == 1:
        start, stop = acs_bounds(m.reshape(-1))
        window = torch.zeros(h, w, device=mask.device)
        window[:, start:stop] = 1.0
        return window
    if tuple(m.shape) != (h, w):
        raise InputError(f"the mask is {tuple(m.shape)} but the k-space is {h} x {w}")
    ch, cw = h // 2, w // 2
    if not bool(m[ch, cw]):
        raise InputError("no fully sampled k-space centre: coil sensitivities cannot be estimated from the data")
    r0, r1 = _run(m[:, cw], ch)
    c0, c1 = _run(m[ch, :], cw)
    while not bool(m[r0:r1, c0:c1].all()):  # shrink towards the centre until the box is full
        r0, r1 = min(r0 + 1, ch), max(r1 - 1, ch + 1)
        c0, c1 = min(c0 + 1, cw), max(c1 - 1, cw + 1)
    window = torch.zeros(h, w, device=mask.device)
    window[r0:r1, c0:c1] = 1.0
    return window


def estimate_sensitivities(kspace: torch.Tensor, mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Coil sensitivities from the autocalibration lines: the low-resolution coil images of the
    fully sampled centre (no window: on the real 16-channel brain a Hann window over its 11 lines
    cost PICS 0.10 SSIM and 6 dB, scripts/studies/multicoil_baselines.py), each divided by their
    root-sum-of-squares, so that sum_c |S_c|^2 = 1 wherever the low-resolution RSS exceeds
    `threshold` of its maximum, and 0 outside. The default 0 keeps the background (noise), as the
    RSS reference of a fully sampled scan does: on the real 16-channel brain at 4x a 2 % support
    mask cost CG-SENSE 0.26 SSIM on the whole image (scripts/studies/multicoil_baselines.py).

    Args:
        kspace: (..., C, H, W) acquired multi-coil k-space.
        mask: (W,) acquired lines or (H, W) samples (the ACS region: `acs_window`).

    Returns:
        (..., C, H, W) complex maps.
    """
    if kspace.ndim < 3:
        raise InputError(f"multi-coil k-space must be (..., coils, H, W), got shape {tuple(kspace.shape)}")
    window = acs_window(mask, (int(kspace.shape[-2]), int(kspace.shape[-1]))).to(kspace.device, kspace.real.dtype)
    low = ifft2c(kspace * window)
    combined = rss(low, -3).unsqueeze(-3)
    support = combined > threshold * combined.amax(dim=(-2, -1), keepdim=True)
    return torch.where(support, low / combined.clamp_min(torch.finfo(combined.dtype).tiny), torch.zeros_like(low))


def _grid(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in units of the half field of view: y (H,), x (W,), float64."""
    h, w = shape
    return ((torch.arange(h, dtype=torch.float64) - h / 2) / (h / 2),
            (torch.arange(w, dtype=torch.float64) - w / 2) / (w / 2))


def _loop_coils(angle: torch.Tensor, ax: float, ay: float, shape: tuple[int, int], dtype: torch.dtype,
                phase_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Loops at `angle` (C,) on an ellipse of semi-axes (ax, ay) half fields of view: magnitude
    1 / distance to the loop, phase the angle around it (plus `phase_offset` (C,)), normalised
    to unit RSS. (C, H, W)."""
    y, x = _grid(shape)
    dx = x[None, None, :] - ax * torch.cos(angle)[:, None, None]
    dy = y[None, :, None] - ay * torch.sin(angle)[:, None, None]
    phase = torch.atan2(dx, -dy) - angle[:, None, None]
    if phase_offset is not None:
        phase = phase + phase_offset[:, None, None]
    maps = torch.polar(1.0 / torch.sqrt(dx**2 + dy**2), phase)
    return (maps / rss(maps, 0)).to(dtype)


def random_coil_maps(coils: int, shape: tuple[int, int], generator: torch.Generator,
                     dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Random receive-array sensitivities for training: `coils` loops on an ellipse around the
    object (semi-axes 1.1 to 2.0 half fields of view, random rotation, each loop's angle jittered
    by up to a third of the spacing), each with the 1/distance magnitude and azimuthal phase of
    `birdcage_maps`, plus a random constant phase per coil; normalised to unit RSS. (C, H, W)."""
    if coils < 1:
        raise InputError(f"the number of coils must be at least 1, got {coils}")

    def uniform(low: float, high: float, n: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    step = 2 * math.pi / coils
    angle = uniform(0, 2 * math.pi) + torch.arange(coils, dtype=torch.float64) * step + uniform(-step / 3, step / 3, coils)
    ax, ay = float(uniform(1.1, 2.0)), float(uniform(1.1, 2.0))
    return _loop_coils(angle, ax, ay, shape, dtype, phase_offset=uniform(-math.pi, math.pi, coils))


def smooth_phase(shape: tuple[int, int], generator: torch.Generator, max_radians: float = math.pi,
                 order: int = 3) -> torch.Tensor:
    """A smooth random phase map (H, W) in radians: a random polynomial of `order` in x and y
    (coefficients uniform, scaled so that the phase spans at most about `max_radians`), as the
    B0 and receive phase of a real gradient-echo image varies slowly over the field of view."""
    y, x = _grid(shape)
    phase = torch.zeros(shape, dtype=torch.float64)
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    coeffs = (2 * torch.rand(len(terms), generator=generator, dtype=torch.float64) - 1) * max_radians / len(terms) ** 0.5
    for c, (i, j) in zip(coeffs, terms):
        phase += c * y[:, None] ** i * x[None, :] ** j
    return phase.float()


def birdcage_maps(coils: int, shape: tuple[int, int], radius: float = 1.5, rotation: float = 0.0,
                  dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Simulated sensitivities of `coils` loops evenly placed on a circle of `radius` (in units of
    the half field of view) around the image, rotated by `rotation` radians: magnitude 1 / distance
    to the coil, phase the angle around it (a birdcage model), normalised to unit RSS.
    Returns (C, H, W)."""
    if coils < 1:
        raise InputError(f"the number of coils must be at least 1, got {coils}")
    angle = rotation + torch.arange(coils, dtype=torch.float64) * (2 * math.pi / coils)
    return _loop_coils(angle, radius, radius, shape, dtype)


def cg_sense(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, iterations: int = 20,
             weight: float = 0.0) -> torch.Tensor:
    """CG-SENSE (Pruessmann et al., MRM 2001): argmin_x ||A x - y||^2 + weight ||A^H A|| ||x||^2
    by conjugate gradients from zero. (..., C, H, W) k-space -> (..., H, W) complex image."""
    op = CartesianSense(maps, mask)
    x0 = torch.zeros(*kspace.shape[:-3], *kspace.shape[-2:], dtype=kspace.dtype, device=kspace.device)
    lam = float(weight) * op.norm(kspace.device) if weight else 0.0
    return regularised_least_squares(op, kspace, x0, lam, iterations)


def l1_wavelet_sense(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, lam: float,
                     iterations: int = 50, levels: int = 3) -> torch.Tensor:
    """Parallel imaging + compressed sensing (PICS): argmin_x 0.5 ||M F S x - y||^2 + lam ||W x||_1,
    W the Haar transform, by FISTA (`l1_wavelet_least_squares`). Maps with unit RSS (or less)
    keep the step of 1 valid. (..., C, H, W) k-space -> (..., H, W) complex image."""
    return l1_wavelet_least_squares(CartesianSense(maps, mask), kspace, lam, iterations, levels)
