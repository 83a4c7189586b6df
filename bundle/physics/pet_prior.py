"""MR-guided PET by the classical route: penalised-likelihood EM with the asymmetric Bowsher prior.

What a physicist with a PET/MR runs instead of a network when the T1 is at hand (Bowsher et al.,
IEEE NSS 2004; Vunckx et al., IEEE TMI 31:599, 2012; Ehrhardt et al., 2019 compare it with their
MR-guided priors): a quadratic smoothness penalty in which each pixel is coupled only to the
`neighbours` of its 8 neighbours whose MR values are closest to its own, so the PET image is
smoothed within MR regions and not across their edges. Written here in torch because neither
MONAI nor the required packages have it (STIR has it in C++; the bundle's physics layer is pure
torch so the same operator and subsets serve OSEM, this and the network's data consistency).

Objective (maximised): L(x) - beta * R(x), L the Poisson log-likelihood of the counts under
`PETOperator` and R(x) = 1/2 sum_j sum_k w_jk (x_j - x_k)^2, w symmetric (`bowsher_weights`:
w_jk = (b_jk + b_kj) / 2 / d_jk, b_jk = 1 where k is among j's chosen neighbours, d_jk the
distance in pixels). The update is De Pierro's (IEEE TMI 14:132, 1995): EM's surrogate of L plus
the separable surrogate (x_j - x_k)^2 <= 1/2 (2 x_j - x_j' - x_k')^2 + 1/2 (2 x_k - x_j' - x_k')^2,
maximised per pixel in closed form (the positive root of a quadratic), so every iterate is
positive and, with one subset, the objective never decreases (tests/physics/test_pet_prior.py
checks that). With ordered subsets each subset's step uses its own sensitivity and beta / n.

beta is given relative to the data's scale (`beta_rel`): beta = beta_rel x mean(sensitivity) /
mean(activity of the uniform start), so one tuned value serves any activity unit and calibration;
the count level still changes the best value (tuned per level on validation, as OSEM's filter).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.physics.pet import PETOperator, em_setup

# the 8 neighbours of a pixel: (row, column) offsets
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., i, j] = x[..., i + dy, j + dx], zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def bowsher_weights(mr: torch.Tensor, neighbours: int = 4) -> torch.Tensor:
    """(..., H, W) anatomical image -> (..., 8, H, W) symmetric weights w_jk of the Bowsher prior,
    one channel per offset in `OFFSETS`: each pixel picks the `neighbours` of its 8 neighbours
    inside the image with the MR values closest to its own (b_jk = 1), w_jk = (b_jk + b_kj) / 2 /
    d_jk (d: 1 or sqrt 2 pixels)."""
    if not 1 <= int(neighbours) <= 8:
        raise InputError(f"neighbours must be in [1, 8], got {neighbours!r}")
    m = mr.float()
    inside = torch.ones_like(m)
    diffs, valid = [], []
    for dy, dx in OFFSETS:
        diffs.append((shifted(m, dy, dx) - m).abs())
        valid.append(shifted(inside, dy, dx))
    d = torch.stack(diffs, -3)
    v = torch.stack(valid, -3)
    d = torch.where(v > 0, d, torch.full_like(d, math.inf))
    order = d.argsort(dim=-3, stable=True)  # ties: the first offsets, deterministic
    chosen = torch.zeros_like(d).scatter(-3, order[..., : int(neighbours), :, :], 1.0) * v
    w = []
    for i, (dy, dx) in enumerate(OFFSETS):
        back = OFFSETS.index((-dy, -dx))  # k's weight towards j: k's channel of the opposite offset, moved to j
        w.append((chosen[..., i, :, :] + shifted(chosen[..., back, :, :], dy, dx)) / 2 / math.hypot(dy, dx))
    return torch.stack(w, -3)


def penalty(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """R(x) = 1/2 sum_j sum_k w_jk (x_j - x_k)^2 per image (...)."""
    total = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    for i, (dy, dx) in enumerate(OFFSETS):
        total = total + 0.5 * (weights[..., i, :, :] * (x - shifted(x, dy, dx)) ** 2).sum((-2, -1))
    return total


def map_em(op: PETOperator, counts: torch.Tensor, background: torch.Tensor | float, weights: torch.Tensor,
           beta_rel: float, iterations: int = 10, subsets: int = 8, mask: torch.Tensor | None = None,
           callback=None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Penalised-likelihood EM (De Pierro's update, ordered subsets) with the quadratic prior of
    `weights` (`bowsher_weights`; (..., 8, H, W)) at strength `beta_rel` (module docstring);
    beta_rel 0 is `bundle.physics.pet.osem`. Same arguments as `osem` otherwise: `start` a positive
    image (e.g. a few OSEM iterations: the prior slows the first iterations from a uniform image);
    beta's scale is the uniform image's level either way."""
    if not (isinstance(beta_rel, (int, float)) and not isinstance(beta_rel, bool) and 0 <= beta_rel < math.inf):
        raise InputError(f"beta_rel must be a number >= 0, got {beta_rel!r}")
    n, y, r, support, uniform, level = em_setup(op, counts, background, iterations, subsets, mask)
    x = uniform if start is None else start.to(y.device, y.dtype).clamp_min(1e-12)
    if support is not None:
        x = x * support
    w = weights.to(y.device, y.dtype)
    if support is not None:  # no coupling to pixels outside the support
        w = torch.stack([w[..., i, :, :] * support * shifted(support, dy, dx) for i, (dy, dx) in enumerate(OFFSETS)], -3)
    w_sum = w.sum(-3)
    parts = [op.subset(k, n) for k in range(n)]
    sens = [part.A_adjoint(torch.ones_like(y[..., k::n, :])) for k, part in enumerate(parts)]
    full = torch.stack(sens).sum(0)
    beta = beta_rel * full.mean((-2, -1)) / level.clamp_min(1e-12)  # (...)
    b = (beta / n)[..., None, None]  # each subset's share
    a2 = 4 * b * w_sum  # the per-pixel quadratic's x^2 coefficient, the same for every step
    coupled = a2 > 1e-12 * a2.amax((-2, -1), keepdim=True).clamp_min(1e-30)
    seen = [s > 1e-12 * s.amax((-2, -1), keepdim=True) for s in sens]
    for it in range(int(iterations)):
        for k, part in enumerate(parts):
            s = sens[k]
            ratio = y[..., k::n, :] / (part.A(x) + r[..., k::n, :]).clamp_min(1e-12)
            em_times_s = x * part.A_adjoint(ratio)  # s_j x_j^EM
            z = torch.stack([w[..., i, :, :] * (x + shifted(x, dy, dx)) for i, (dy, dx) in enumerate(OFFSETS)]).sum(0)
            lin = s - 2 * b * z
            root = (-lin + torch.sqrt(lin**2 + 4 * a2 * em_times_s)) / (2 * a2).clamp_min(1e-30)
            plain = em_times_s / s.clamp_min(1e-12)  # no coupling: EM's own update
            x = torch.where(seen[k], torch.where(coupled, root, plain), x)
            if support is not None:
                x = x * support
        if callback is not None:
            callback(it + 1, x)
    return x


def log_likelihood(op: PETOperator, counts: torch.Tensor, background: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The Poisson log-likelihood of the counts for image x, up to a constant: sum y log ybar - ybar."""
    ybar = op.A(x) + torch.as_tensor(background, dtype=x.dtype, device=x.device)
    return (counts * torch.log(ybar.clamp_min(1e-12)) - ybar).sum((-2, -1))
