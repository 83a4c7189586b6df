"""Compressed-sensing baseline: L1-wavelet regularised reconstruction solved with FISTA.

    x* = argmin_x 0.5 * ||M F x - y||^2 + lam * ||W x||_1

with F the centred orthonormal FFT, M the sampling mask, y the acquired k-space and W an
orthonormal multi-level Haar wavelet transform (so the proximal step is exact soft-thresholding):
`bundle.physics.solvers.l1_wavelet_least_squares` (FISTA with the Haar L1 prox) on the Cartesian
operator. Pure torch, batched. SigPy would give the same model, but it is not among the required packages, and
these few lines keep the baseline on the same device and batching as the network.

Reference: Lustig, Donoho, Pauly, "Sparse MRI", MRM 2007; Beck & Teboulle, "FISTA", SIAM J.
Imaging Sci. 2009.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bundle.physics.mri import CartesianSingleCoil
from bundle.physics.solvers import l1_wavelet_least_squares
from bundle.physics.wavelets import haar


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
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations!r}")
    op = CartesianSingleCoil(mask, (int(kspace.shape[-2]), int(kspace.shape[-1])))
    return l1_wavelet_least_squares(op, kspace, lam, iterations, levels)


def objective(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, lam: float, levels: int = 3) -> float:
    """0.5 ||M F x - y||^2 + lam ||W x||_1 (W on the zero-padded grid), for monitoring and tests."""
    h, w = image.shape[-2:]
    div = 2**levels
    xp = torch.complex(
        F.pad(image.real, [0, (-w) % div, 0, (-h) % div]), F.pad(image.imag, [0, (-w) % div, 0, (-h) % div])
    )
    res = CartesianSingleCoil(mask).A(image) - kspace
    return float(0.5 * (res.abs() ** 2).sum() + lam * haar(xp, levels).abs().sum())
