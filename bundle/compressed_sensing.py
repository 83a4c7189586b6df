"""Compressed-sensing baseline: L1-wavelet regularised reconstruction solved with FISTA.

    x* = argmin_x 0.5 * ||M F x - y||^2 + lam * ||W x||_1

with F the centred orthonormal FFT, M the sampling mask, y the acquired k-space and W an
orthonormal multi-level Haar wavelet transform (so the proximal step is exact soft-thresholding).
Pure torch, batched; tensors in, tensors out. SigPy would give the same model, but it is not
among the required packages, and 40 lines of torch keep the baseline on the same device and
batching as the network.

Reference: Lustig, Donoho, Pauly, "Sparse MRI", MRM 2007; Beck & Teboulle, "FISTA", SIAM J.
Imaging Sci. 2009.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bundle.kspace import apply_mask, fft2c, ifft2c


def _haar_step(x: torch.Tensor) -> torch.Tensor:
    """One orthonormal 2D Haar level of (..., H, W) (H, W even): [[LL, LH], [HL, HH]] quadrants."""
    a, b = x[..., 0::2, :], x[..., 1::2, :]
    x = torch.cat([(a + b), (a - b)], dim=-2) / math.sqrt(2)
    a, b = x[..., :, 0::2], x[..., :, 1::2]
    return torch.cat([(a + b), (a - b)], dim=-1) / math.sqrt(2)


def _haar_step_inv(c: torch.Tensor) -> torch.Tensor:
    h, w = c.shape[-2] // 2, c.shape[-1] // 2
    lo, hi = c[..., :, :w], c[..., :, w:]
    x = torch.stack([(lo + hi), (lo - hi)], dim=-1).flatten(-2) / math.sqrt(2)
    lo, hi = x[..., :h, :], x[..., h:, :]
    return torch.stack([(lo + hi), (lo - hi)], dim=-2).flatten(-3, -2) / math.sqrt(2)


def haar(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Orthonormal multi-level 2D Haar transform of (..., H, W), H and W divisible by 2**levels."""
    c = x.clone()
    h, w = x.shape[-2:]
    for _ in range(levels):
        c[..., :h, :w] = _haar_step(c[..., :h, :w])
        h, w = h // 2, w // 2
    return c


def ihaar(c: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of `haar`."""
    x = c.clone()
    h, w = c.shape[-2] >> (levels - 1), c.shape[-1] >> (levels - 1)
    for _ in range(levels):
        x[..., :h, :w] = _haar_step_inv(x[..., :h, :w])
        h, w = h * 2, w * 2
    return x


def soft_threshold(c: torch.Tensor, t: float) -> torch.Tensor:
    """Complex soft-thresholding: shrink the magnitude by t, keep the phase."""
    mag = c.abs()
    return c * (mag - t).clamp_min(0) / mag.clamp_min(1e-12)


def cs_reconstruct(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 1e-3,
    iterations: int = 50,
    levels: int = 3,
) -> torch.Tensor:
    """L1-wavelet compressed-sensing reconstruction with FISTA (step 1: ||M F|| = 1).

    Args:
        kspace: (..., H, W) complex acquired k-space (zeros on missing lines).
        mask: (W,) or broadcastable (..., 1, W) acquired lines.
        lam: regularisation weight, on the scale of the image (tune it on validation data).
        iterations: FISTA iterations.
        levels: Haar levels.

    Returns:
        (..., H, W) complex image; its magnitude is the reconstruction.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations!r}")
    h, w = kspace.shape[-2:]
    div = 2**levels
    ph, pw = (-h) % div, (-w) % div

    def pad(x: torch.Tensor) -> torch.Tensor:  # the unknown lives on a grid the wavelet can cut
        return torch.complex(F.pad(x.real, [0, pw, 0, ph]), F.pad(x.imag, [0, pw, 0, ph]))

    def crop(x: torch.Tensor) -> torch.Tensor:
        return x[..., :h, :w]

    x = pad(ifft2c(kspace))
    z, t = x, 1.0
    for _ in range(iterations):
        grad = pad(ifft2c(apply_mask(fft2c(crop(z)), mask) - kspace))
        x_new = ihaar(soft_threshold(haar(z - grad, levels), lam), levels)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return crop(x)


def objective(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, lam: float, levels: int = 3) -> float:
    """0.5 ||M F x - y||^2 + lam ||W x||_1 (W on the zero-padded grid), for monitoring and tests."""
    h, w = image.shape[-2:]
    div = 2**levels
    xp = torch.complex(
        F.pad(image.real, [0, (-w) % div, 0, (-h) % div]), F.pad(image.imag, [0, (-w) % div, 0, (-h) % div])
    )
    res = apply_mask(fft2c(image), mask) - kspace
    return float(0.5 * (res.abs() ** 2).sum() + lam * haar(xp, levels).abs().sum())
