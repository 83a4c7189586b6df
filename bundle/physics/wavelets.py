"""The orthonormal multi-level 2D Haar transform and complex soft-thresholding: the sparsifying
transform and proximal map of the L1-wavelet prior (Lustig, Donoho, Pauly, "Sparse MRI", MRM 2007).
Pure torch, batched over leading dimensions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


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


def haar_l1_prox(lam: float, levels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The proximal map of lam ||W x||_1 for the orthonormal Haar W: W^T soft(W x, lam)."""
    return lambda x: ihaar(soft_threshold(haar(x, levels), lam), levels)
