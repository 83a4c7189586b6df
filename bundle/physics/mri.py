"""MRI physics: centred FFTs, Cartesian undersampling masks, the single-coil Cartesian operator,
undersampling and hard data consistency.

Pure torch/numpy: tensors in, tensors out. Nothing here knows about MONAI, configs or files.

Conventions (fastMRI): images are (..., H, W); k-space lines are the columns of the last axis
(the phase-encode direction), and FFTs are centred and orthonormal, so a fully sampled mask gives
back the image exactly and the adjoint of the FFT is its inverse.
"""

from __future__ import annotations

import numpy as np
import torch

from bundle.errors import InputError
from bundle.physics.operator import LinearOperator

MASK_TYPES = ("equispaced", "random")


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes.

    Args:
        image: (..., H, W) real or complex tensor.

    Returns:
        (..., H, W) complex k-space.
    """
    x = torch.fft.ifftshift(image, dim=(-2, -1))
    x = torch.fft.fft2(x, norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over the last two axes (the inverse of `fft2c`).

    Args:
        kspace: (..., H, W) complex k-space.

    Returns:
        (..., H, W) complex image.
    """
    x = torch.fft.ifftshift(kspace, dim=(-2, -1))
    x = torch.fft.ifft2(x, norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's pairing of acceleration and fully sampled centre: 4x -> 0.08, 8x -> 0.04."""
    check_acceleration(acceleration)
    return 0.32 / float(acceleration)


def check_acceleration(acceleration: float) -> None:
    """An `InputError` (a `ValueError`) unless `acceleration` is a finite number >= 1."""
    try:
        ok = not isinstance(acceleration, bool) and bool(np.isfinite(float(acceleration))) and float(acceleration) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"acceleration must be a number >= 1, got {acceleration!r}")


def check_mask_type(mask_type: str) -> None:
    if mask_type not in MASK_TYPES:
        raise InputError(f"unknown mask_type {mask_type!r}: expected one of {', '.join(MASK_TYPES)}")


def cartesian_mask(
    num_cols: int,
    acceleration: float,
    center_fraction: float,
    mask_type: str = "equispaced",
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """A 1D Cartesian sampling mask over `num_cols` phase-encode lines.

    The mask keeps the round(num_cols * center_fraction) central lines (fastMRI's placement) and,
    in total, exactly max(round(num_cols / acceleration), centre) lines: the remaining lines are
    spread equally (with a random offset) over the outer k-space for "equispaced", or drawn
    without replacement for "random".

    We do not call `monai.apps.reconstruction`'s `RandomKspaceMask`/`EquispacedKspaceMask` here:
    they draw random lines by Bernoulli trials (so the acceleration is only reached on average),
    and they fuse mask generation with the FFT and coil combination of a (coils, H, W, 2) layout.
    Reconstruction needs the mask on its own (for data consistency and to record it) and an
    exact, reproducible acceleration.

    Args:
        num_cols: number of phase-encode lines W.
        acceleration: undersampling factor R >= 1.
        center_fraction: fraction of central lines always kept, in [0, 1].
        mask_type: "equispaced" or "random".
        rng: numpy random generator (a fixed seed gives a fixed mask).

    Returns:
        (W,) boolean tensor, True where a line is acquired.
    """
    check_acceleration(acceleration)
    check_mask_type(mask_type)
    if not 0.0 <= center_fraction <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction!r}")
    if num_cols < 1:
        raise ValueError(f"num_cols must be positive, got {num_cols}")
    rng = rng if rng is not None else np.random.default_rng()

    num_low = int(round(num_cols * center_fraction))
    num_total = max(int(round(num_cols / acceleration)), num_low, 1)
    mask = np.zeros(num_cols, dtype=bool)
    pad = (num_cols - num_low + 1) // 2
    mask[pad : pad + num_low] = True
    outer = np.flatnonzero(~mask)
    remaining = num_total - int(mask.sum())
    if remaining > 0:
        if mask_type == "random":
            chosen = rng.choice(outer, size=remaining, replace=False)
        else:
            step = len(outer) / remaining
            offset = rng.uniform(0, step)
            chosen = outer[np.floor(offset + step * np.arange(remaining)).astype(int) % len(outer)]
        mask[chosen] = True
    return torch.from_numpy(mask)


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the k-space lines that `mask` does not keep.

    Args:
        kspace: (..., H, W) complex k-space.
        mask: (W,) or broadcastable (..., 1, W) mask.

    Returns:
        (..., H, W) complex k-space with unacquired lines set to zero.
    """
    if mask.shape[-1] != kspace.shape[-1]:
        raise ValueError(f"mask has {mask.shape[-1]} lines but the k-space is {kspace.shape[-1]} wide")
    return kspace * mask.to(dtype=kspace.real.dtype, device=kspace.device)


def undersample(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-filled reconstruction of `image` sampled with `mask`.

    Args:
        image: (..., H, W) real or complex image.
        mask: (W,) boolean phase-encode lines that are kept.

    Returns:
        The zero-filled magnitude image (..., H, W) and the masked k-space (..., H, W) complex.
    """
    if image.ndim < 2:
        raise ValueError(f"expected an image of shape (..., H, W), got {tuple(image.shape)}")
    kspace = apply_mask(fft2c(image), mask)
    return ifft2c(kspace).abs(), kspace


def data_consistency(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard data consistency: put the acquired k-space lines back into the image's k-space.

    Args:
        image: (..., H, W) real or complex image estimate.
        kspace: (..., H, W) complex acquired (masked) k-space.
        mask: (W,) or broadcastable (..., 1, W) mask of acquired lines.

    Returns:
        (..., H, W) complex image whose k-space equals `kspace` on the acquired lines.
    """
    if image.shape[-2:] != kspace.shape[-2:]:
        raise ValueError("image " + str(image.shape) + " and k-space " + str(kspace.shape) + " differ in size")
    m = mask.to(dtype=kspace.real.dtype, device=kspace.device)
    k_est = fft2c(image)
    return ifft2c(k_est * (1 - m) + kspace * m)


class CartesianSingleCoil(LinearOperator):
    """Single-coil Cartesian MRI: A = M F, a complex image to its acquired k-space.

    Shapes: x (..., H, W) complex (or real) image -> y (..., H, W) complex k-space, zero on the
    lines the mask does not keep. A^H = F^H M (the FFT is orthonormal, M a 0/1 diagonal), so
    A^H A = F^H M F and ||A^H A|| = 1 for any mask with one acquired line.

    A multi-coil SENSE operator fits beside it with the same interface: x (..., H, W) ->
    y (..., C, H, W), A = M F S with the coil sensitivities S.

    Args:
        mask: (W,) or broadcastable (..., 1, W) acquired phase-encode lines.
        image_shape: (H, W), for `norm()`'s start.
    """

    def __init__(self, mask: torch.Tensor, image_shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.mask = mask
        self.image_shape = tuple(image_shape) if image_shape is not None else (1, int(mask.shape[-1]))

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return apply_mask(fft2c(x), self.mask)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return ifft2c(apply_mask(y, self.mask))
