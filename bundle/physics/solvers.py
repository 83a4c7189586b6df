"""Solvers over any `LinearOperator`: conjugate gradients on regularised normal equations (data
consistency), FISTA with a proximal step (compressed sensing), and the checks of their settings.
Power iteration is `bundle.physics.operator.power_iteration`. Pure torch, batched over leading
dimensions (one solve per slice)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.physics.operator import LinearOperator
from bundle.physics.wavelets import haar_l1_prox


def check_regularisation(
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


def regularised_least_squares(
    op: LinearOperator, y: torch.Tensor, x0: torch.Tensor, lam: float | torch.Tensor, iterations: int
) -> torch.Tensor:
    """argmin_x ||A x - y||^2 + lam ||x - x0||^2 by `iterations` conjugate-gradient steps from x0 on
    the normal equations (A^H A + lam I) x = A^H y + lam x0, each item of the leading (batch)
    dimensions on its own; real or complex (the system is Hermitian, so the step sizes are real).
    Early stopping regularises further.

    Shapes: x0 (..., *op.image_shape), y the measurements of the same leading shape.
    """
    dims = tuple(range(-len(op.image_shape), 0))

    def normal(v: torch.Tensor) -> torch.Tensor:
        return op.A_adjoint(op.A(v)) + lam * v

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # Re <a, b>, one value per item
        return (a.conj() * b).real.sum(dims, keepdim=True)

    x = x0.clone()
    r = op.A_adjoint(y.to(x0) - op.A(x0))  # b - N x0 (the lam terms cancel)
    p, rs = r.clone(), dot(r, r)
    tiny = torch.finfo(rs.dtype).tiny
    for _ in range(iterations):
        ap = normal(p)
        curvature = dot(p, ap)
        alpha = torch.where(curvature > 0, rs / curvature.clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = dot(r, r)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return x


def fista(
    x0: torch.Tensor,
    gradient: Callable[[torch.Tensor], torch.Tensor],
    prox: Callable[[torch.Tensor], torch.Tensor],
    iterations: int,
) -> torch.Tensor:
    """FISTA (Beck & Teboulle, SIAM J. Imaging Sci. 2009) for min f(x) + g(x) with step 1 (so
    ||grad f||'s Lipschitz constant must be at most 1, e.g. f = 0.5 ||A x - y||^2 with ||A^H A|| <= 1;
    scale f otherwise): `gradient` is grad f, `prox` the proximal map of g."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations!r}")
    x, z, t = x0, x0, 1.0
    for _ in range(iterations):
        x_new = prox(z - gradient(z))
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x


def l1_wavelet_least_squares(
    op: LinearOperator, y: torch.Tensor, lam: float, iterations: int = 50, levels: int = 3
) -> torch.Tensor:
    """argmin_x 0.5 ||A x - y||^2 + lam ||W x||_1 with W the orthonormal Haar transform of `levels`
    levels, by FISTA from A^H y with step 1 (so ||A^H A|| <= 1 is required: a Cartesian mask, or
    SENSE with unit-RSS maps). The image is zero-padded to a grid the wavelet can cut; complex
    images are thresholded on their magnitude. Lustig, Donoho, Pauly, MRM 2007 ("Sparse MRI");
    with coil maps, the L1-wavelet SENSE of BART's `pics -l1`.

    Returns (..., H, W), the image grid of `op`.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    h, w = op.image_shape[-2:]
    div = 2**levels
    ph, pw = (-h) % div, (-w) % div

    def pad(x: torch.Tensor) -> torch.Tensor:  # the unknown lives on a grid the wavelet can cut
        if x.is_complex():
            return torch.complex(F.pad(x.real, [0, pw, 0, ph]), F.pad(x.imag, [0, pw, 0, ph]))
        return F.pad(x, [0, pw, 0, ph])

    def crop(x: torch.Tensor) -> torch.Tensor:
        return x[..., :h, :w]

    def gradient(z: torch.Tensor) -> torch.Tensor:  # of 0.5 ||A x - y||^2 on the padded grid
        return pad(op.A_adjoint(op.A(crop(z)) - y))

    return crop(fista(pad(op.A_adjoint(y)), gradient, haar_l1_prox(lam, levels), iterations))
