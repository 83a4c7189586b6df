"""Compressed-sensing baseline: L1-wavelet regularised reconstruction solved with FISTA.

    x* = argmin_x 0.5 * ||M F x - y||^2 + lam * ||W x||_1

with F the centred orthonormal FFT, M the sampling mask, y the acquired k-space and W an
orthonormal multi-level Haar wavelet transform (so the proximal step is exact soft-thresholding):
FISTA (`bundle.physics.solvers.fista`) on the Cartesian operator with the Haar L1 prox. Pure
torch, batched. SigPy would give the same model, but it is not among the required packages, and
these few lines keep the baseline on the same device and batching as the network.

Reference: Lustig, Donoho, Pauly, "Sparse MRI", MRM 2007; Beck & Teboulle, "FISTA", SIAM J.
Imaging Sci. 2009.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bundle.physics.mri import CartesianSingleCoil, ifft2c
from bundle.physics.solvers import fista
from bundle.physics.wavelets import haar, haar_l1_prox


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

    op = CartesianSingleCoil(mask)

    def gradient(z: torch.Tensor) -> torch.Tensor:  # of 0.5 ||M F x - y||^2 on the padded grid
        # A^H (A z - y) = F^H M (M F z - y) = F^H (M F z - y): the residual is zero off the mask
        # already (y is acquired k-space), so the adjoint's mask is skipped (15% of the time)
        return pad(ifft2c(op.A(crop(z)) - kspace))

    return crop(fista(pad(ifft2c(kspace)), gradient, haar_l1_prox(lam, levels), iterations))


def objective(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, lam: float, levels: int = 3) -> float:
    """0.5 ||M F x - y||^2 + lam ||W x||_1 (W on the zero-padded grid), for monitoring and tests."""
    h, w = image.shape[-2:]
    div = 2**levels
    xp = torch.complex(
        F.pad(image.real, [0, (-w) % div, 0, (-h) % div]), F.pad(image.imag, [0, (-w) % div, 0, (-h) % div])
    )
    res = CartesianSingleCoil(mask).A(image) - kspace
    return float(0.5 * (res.abs() ** 2).sum() + lam * haar(xp, levels).abs().sum())
