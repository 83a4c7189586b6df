"""The classical multi-coil baselines a physicist runs: ESPIRiT sensitivities, CG-SENSE and
L1-wavelet PICS, on one slice of acquired k-space.

ESPIRiT and PICS are SigPy's (`sigpy.mri.app.EspiritCalib`, `sigpy.mri.app.L1WaveletRecon`,
Daubechies-4 wavelets): the field's reference implementations, so the bar the network is measured
against is not our own code (ours, `bundle.physics.mri_sense.l1_wavelet_sense` with Haar
wavelets, is tested against it). ESPIRiT on the whole calibration region (`espirit_calibration`,
calibration "window") is ours, SigPy's algorithm on a rectangle, checked against SigPy's on a
square (the baselines of compare.py use it since 0.21; the shipped reconstruction does not:
scripts/studies/multicoil_espirit_window.py). CG-SENSE is ours (CG on the normal equations of
`bundle.physics.mri_sense.CartesianSense`).

`pics_weight_by_cross_validation` chooses PICS's weight from a scan's own held-out lines; the
shipped reconstruction does not use it (`scripts/studies/multicoil_joint_weight.py`: 0.16 dB
below the fixed weight on validation, since it ranks by the coil k-space error, not by the
noisy RSS reference's), and it stays for studies and for data unlike the validation sets.

Weights are relative: the k-space is divided by its norm per pixel (`scale_of`) before the
solver and the image multiplied back, so one weight serves data of any scanner scale.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from bundle.errors import InputError
from bundle.options import check_options
from bundle.physics.mri import fft2c, ifft2c
from bundle.physics.mri_sense import CartesianSense, acs_window, estimate_sensitivities, norm_per_pixel, rss
from bundle.physics.solvers import regularised_least_squares

logger = logging.getLogger(__name__)

METHODS = ("zero_filled", "cg_sense", "pics")
ESPIRIT_MIN_CALIBRATION = 4  # lines: a kernel of 3 fits in them
# The shipped multi-coil reconstruction is (1 - a) x network + a x PICS: the two make different
# errors (the network's are texture, PICS's are wavelet blocks and residual aliasing), so their
# average is closer to the truth than either. 0.14: a = 0.3, the best worst-setting target ratio
# on validation (real phantoms and simulated coils, 4x and 8x; scripts/studies/
# multicoil_pics_blend.py: -0.38 for the network alone, +0.26 at 0.3). 0.15: only on the object:
# on grids oversampled along the readout (as scanners and fastMRI's brain files acquire them)
# PICS's background is not the RSS reference's noise floor, and averaging it in everywhere cost
# 0.02-0.03 SSIM; where `object_support` of the network's image is, the average, elsewhere the
# network alone (worst target ratio over six validation settings, scripts/studies/
# multicoil_oversampled_blend.py: -0.04 everywhere, +0.11 on the object). Since 0.15 too, a by the
# band of effective acceleration, as PICS's weight: 0.4 up to 5.66x, 0.2 above (the same study
# with --by-acceleration: +0.22; 0.4 / 0.2 is the tied pair nearest to 0.3 / 0.3).
PICS_BLEND_BY_ACCELERATION = ((32 ** 0.5, 0.4), (float("inf"), 0.2))
# Since 0.17, up to an effective 5.66x the network's image is not averaged with PICS but joined
# with it in one problem: min 1/2 ||A x - y||^2 + lam ||W x||_1 + mu/2 ||x - x_net||^2
# (`network_pics`, mu = NETWORK_PICS_MU), data-consistent with both priors, on the object (the
# network alone in the background, as the average). Chosen on validation and confirmed on two
# volumes no multi-coil step had used (scripts/studies/multicoil_network_pics.py: at 4x +0.34 to
# +0.89 dB over the average on the validation settings; on the confirmation volumes +0.54 and
# +0.34 dB, SSIM +0.006 and +0.003). At 8x no mu beat the average, which stays there.
PICS_MODES = ("joint", "average")
PICS_MODE_BY_ACCELERATION = ((32 ** 0.5, "joint"), (float("inf"), "average"))
NETWORK_PICS_MU = 0.01
# Since 0.19 the shipped solves (the joint at 4x, the average's PICS at 8x) run 30 accelerated
# proximal-gradient iterations with the step from an analytic bound (`network_pics`, step "bound")
# instead of 100 after 30 power iterations (SigPy's default): the fewest of 100 / 50 / 30 / 20
# within 0.05 dB, 0.002 SSIM and 0.02 of the worst target ratio of the 0.18 solver on the six
# validation settings (scripts/studies/multicoil_pics_iterations.py), about 4x less solver time.
# "0.18" (100 iterations, SigPy's step: `pics`'s solver) reproduces the earlier studies.
SOLVERS = MappingProxyType({"shipped": (30, "bound"), "0.18": (100, "power")})  # read-only
PICS_REGIONS = ("object", "all")
PICS_REGION = "object"
# PICS weights tuned on the real validation phantoms (scripts/compare.py --multicoil): 0.01 at 4x,
# 0.03 at 8x; the step falls at the geometric middle of the two, an effective acceleration (all
# k-space samples over the acquired ones, the centre included; a fastMRI mask's is its nominal one)
# of sqrt(32) = 5.66
PICS_WEIGHTS_BY_ACCELERATION = ((32 ** 0.5, 0.01), (float("inf"), 0.03))


def check_solver(solver: str) -> None:
    """`solver` names one of `SOLVERS`, or ValueError."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")


def effective_acceleration(mask: np.ndarray) -> float:
    """All k-space samples over the acquired ones of `mask` ((W,) or (H, W)), the centre included."""
    m = np.asarray(mask, dtype=bool)
    return 1.0 / (float(m.mean()) if m.any() else 1.0)


def by_acceleration(acceleration: float, table: tuple[tuple[float, Any], ...]) -> Any:
    """The value of the first (limit, value) band of `table` whose limit is above `acceleration`."""
    return next(v for limit, v in table if acceleration < limit)


def pics_weight_for(mask: np.ndarray) -> float:
    """The PICS weight tuned on validation for the effective acceleration of `mask` ((W,) or (H, W))."""
    return by_acceleration(effective_acceleration(mask), PICS_WEIGHTS_BY_ACCELERATION)


def pics_mode_for(mask: np.ndarray) -> str:
    """How the shipped reconstruction uses PICS at the effective acceleration of `mask`: "joint"
    (`network_pics`) or "average" (`blend_images`), chosen on validation."""
    return by_acceleration(effective_acceleration(mask), PICS_MODE_BY_ACCELERATION)


def pics_blend_for(mask: np.ndarray, mode: str = "average") -> float:
    """The shipped share of PICS (mode "average") or of the joint solution ("joint": 1, all of it on
    the object) for the effective acceleration of `mask` (chosen on validation)."""
    if mode == "joint":
        return 1.0
    return by_acceleration(effective_acceleration(mask), PICS_BLEND_BY_ACCELERATION)


def scale_of(kspace: np.ndarray) -> float:
    """The k-space norm per pixel of one slice (C, H, W) (> 0; `norm_per_pixel`)."""
    return float(norm_per_pixel(torch.from_numpy(np.asarray(kspace, dtype=np.complex64))))


def _window_box(mask: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """[r0, r1, c0, c1) of the calibration region (`acs_window`, a box) on a grid of `shape`."""
    window = acs_window(torch.from_numpy(np.asarray(mask)), shape).numpy()
    rows, cols = np.flatnonzero(window.any(1)), np.flatnonzero(window.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _calibration_width(mask: np.ndarray, shape: tuple[int, int]) -> int:
    r0, r1, c0, c1 = _window_box(mask, shape)
    return min(r1 - r0, c1 - c0)


# ESPIRiT's cost grows with the image grid (per pixel, a coils x coils matrix from every kernel,
# then power iterations): about 30 s per 640 x 320 x 16-coil slice on 2 CPU cores. Its matrix field
# is band-limited by the kernel (6 k-space samples wide), so a grid of ESPIRIT_GRID samples across
# the field of view samples it exactly; only the eigenvectors are interpolated to the full grid.
# Why not SigPy as it is: it works on the full grid only. scripts/studies/espirit_grid.py measures
# what the coarse grid changes on validation scans.
ESPIRIT_GRID = 128


def fft_grid_resample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Periodic linear interpolation of (..., h, w) samples on a centred FFT grid to (..., H, W) on
    the same field of view (pixel j of n sits at (j - n // 2) / n of it, as after `ifft2c`)."""
    out = np.asarray(x)
    for axis, big in zip((-2, -1), shape):
        n = out.shape[axis]
        if n == big:
            continue
        pos = (np.arange(big) - big // 2) * n / big + n // 2
        lower = np.floor(pos)
        t = (pos - lower).astype(np.float32)
        i0, i1 = lower.astype(int) % n, (lower.astype(int) + 1) % n
        t = t.reshape((-1, 1) if axis == -2 else (-1,))
        out = np.take(out, i0, axis=axis) * (1 - t) + np.take(out, i1, axis=axis) * t
    return out


# SigPy's EspiritCalib calibrates on a square of `calib_width` around the centre. With a Cartesian
# line mask the calibration region is the acquired lines over every row (e.g. 10 x 128 at 8x on
# 256 lines), so the square (10 x 10) keeps a twelfth of it: with a 6-sample kernel, 25 kernel
# positions for a matrix of coils x 36 columns, too few rows to find the null space. "window"
# calibrates on the whole fully sampled region (`acs_window`, rectangular), the same algorithm
# otherwise (`espirit_calibration`, checked against SigPy's on a square region). Since 0.23 the
# shipped reconstruction uses "window" (the weights, trained with "square", stay): on real receive
# arrays in a scanner's geometry (the readout oversampled twice, fastMRI's centre fractions, where
# the square gives fewer calibration rows than unknowns) it was +0.62 dB and +0.009 SSIM over
# "square" in the mean of four validation settings, better in each
# (scripts/studies/multicoil_espirit_scanner_geometry.py); on the six earlier settings the two were
# within 0.01 dB (scripts/studies/multicoil_espirit_window.py). compare.py's baselines use it since 0.21.
ESPIRIT_CALIBRATION = "window"  # the names: bundle.options.RULES["espirit_calibration"]
# "window24": the window cut to at most this many samples each way around the centre of k-space,
# the default calibration size of BART's ecalib (-r 24); scripts/studies/multicoil_espirit_window.py
ESPIRIT_CALIBRATION_SIZE = 24


def _limit_box(box: tuple[int, int, int, int], shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """`box` ([r0, r1, c0, c1)) cut to at most `size` samples each way around the centre of a
    centred FFT grid of `shape` (index n // 2)."""
    out = []
    for (lo, hi), n in zip(((box[0], box[1]), (box[2], box[3])), shape):
        start = n // 2 - size // 2
        out += [max(lo, start), min(hi, start + size)]
    return out[0], out[1], out[2], out[3]


def espirit_calibration(kspace: np.ndarray, box: tuple[int, int, int, int], threshold: float = 0.02,
                        kernel_width: int = 6, crop: float = 0.0, iterations: int = 100) -> np.ndarray:
    """ESPIRiT (Uecker et al., MRM 2014) of (C, H, W) k-space calibrated on the rows box[0]:box[1]
    and columns box[2]:box[3]: the calibration matrix of every kernel_width x kernel_width patch of
    every coil, its right singular vectors above `threshold` of the largest singular value as
    kernels, each kernel's image-space (C x C) outer products summed per pixel, the top eigenvector
    by power iterations, its phase relative to coil 0; pixels whose eigenvalue is not above `crop`
    get zero maps. SigPy's `EspiritCalib` step by step, on any rectangle (its own takes a centred
    square). (C, H, W) complex64."""
    import sigpy as sp

    c, h, w = kspace.shape
    r0, r1, c0, c1 = box
    calib = np.asarray(kspace[:, r0:r1, c0:c1], dtype=np.complex64)
    blocks = sp.array_to_blocks(calib, [kernel_width] * 2, [1, 1])  # (C, rows, cols, k, k)
    matrix = blocks.reshape(c, -1, kernel_width ** 2).transpose(1, 0, 2).reshape(-1, c * kernel_width ** 2)
    _, singular, vh = np.linalg.svd(matrix, full_matrices=False)
    kernels = vh[singular > threshold * singular.max()].reshape(-1, c, kernel_width, kernel_width)
    gram = np.zeros((h, w, c, c), np.complex64)
    for kernel in kernels:
        a = sp.ifft(sp.resize(kernel, (c, h, w)), axes=(-2, -1)).transpose(1, 2, 0).astype(np.complex64)
        gram += a[..., :, None] * a[..., None, :].conj()
    gram *= h * w / kernel_width ** 2
    v = np.ones((h, w, c, 1), np.complex64)
    eig = np.ones((h, w, 1, 1), np.float32)
    for _ in range(int(iterations)):
        v = gram @ v
        eig = np.sqrt((np.abs(v) ** 2).sum(-2, keepdims=True))
        v = v / np.maximum(eig, np.finfo(np.float32).tiny)
    maps = v[..., 0].transpose(2, 0, 1)
    reference = maps[0]
    maps = maps * np.conj(reference / np.maximum(np.abs(reference), np.finfo(np.float32).tiny))
    return (maps * (eig[..., 0, 0] > crop)).astype(np.complex64)


def espirit_maps(kspace: np.ndarray, mask: np.ndarray, threshold: float = 0.02, kernel_width: int = 6,
                 crop: float = 0.95, grid: int | None = ESPIRIT_GRID, calibration: str | None = None) -> np.ndarray:
    """ESPIRiT sensitivities (Uecker et al., MRM 2014) of one slice: (C, H, W) complex64.
    The calibration region is the fully sampled centre of `mask` (`acs_window`): with
    `calibration` "square" SigPy's `EspiritCalib` on the centred square of its narrower side, with
    "window" (None: `ESPIRIT_CALIBRATION`, the shipped one) `espirit_calibration` on all of it, with
    "window24" on the part of it within `ESPIRIT_CALIBRATION_SIZE` samples each way around the
    centre (BART ecalib's default size); the kernel narrowed to fit it. Pixels whose eigenvalue
    is below `crop` get zero maps (SigPy's default 0.95; 0 keeps every pixel, as the RSS
    reference does). With crop 0 and a side longer than
    `grid`, the maps are computed on a grid of at most `grid` x `grid` samples of the same field
    of view (the centre of k-space, the calibration region in it), then interpolated
    (`fft_grid_resample`) and normalised to unit RSS; None: the full grid."""
    import sigpy.mri as mr

    calibration = ESPIRIT_CALIBRATION if calibration is None else calibration
    check_options(espirit_calibration=calibration)
    h, w = kspace.shape[-2:]
    r0, r1, c0, c1 = _window_box(mask, (h, w))
    calib = min(r1 - r0, c1 - c0)
    if calib < ESPIRIT_MIN_CALIBRATION:
        raise InputError(f"the fully sampled centre is {calib} lines wide, too narrow for ESPIRiT "
                         f"(at least {ESPIRIT_MIN_CALIBRATION})")
    kernel_width = min(int(kernel_width), calib - 1)  # 8x on 128 lines leaves 5 calibration lines
    k = np.asarray(kspace, dtype=np.complex64) / scale_of(kspace)
    small = (h, w) if grid is None or crop > 0 else (min(h, max(int(grid), calib)), min(w, max(int(grid), calib)))
    top, left = h // 2 - small[0] // 2, w // 2 - small[1] // 2
    if small != (h, w):
        k = k[..., top:top + small[0], left:left + small[1]]
    if calibration in ("window", "window24"):
        box = (max(r0 - top, 0), min(r1 - top, small[0]), max(c0 - left, 0), min(c1 - left, small[1]))
        if calibration == "window24":
            box = _limit_box(box, small, ESPIRIT_CALIBRATION_SIZE)
        maps = espirit_calibration(k, box, threshold, kernel_width, crop)
    else:
        maps = np.asarray(mr.app.EspiritCalib(k, calib_width=calib, thresh=threshold, kernel_width=kernel_width,
                                              crop=crop, show_pbar=False).run(), dtype=np.complex64)
    if small != (h, w):
        maps = fft_grid_resample(maps, (h, w))
        norm = np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
        maps = np.where(norm > 0, maps / np.maximum(norm, 1e-12), 0).astype(np.complex64)
    return maps


def sensitivities(kspace: np.ndarray, mask: np.ndarray, crop: float = 0.0, calibration: str | None = None) -> np.ndarray:
    """ESPIRiT maps (all pixels kept by default; `calibration` as `espirit_maps`); where the
    calibration region is too narrow for ESPIRiT (under 4 lines: 8x on 64 lines leaves 3), the
    documented fallback: the calibration region's low-resolution coil images over their RSS
    (`estimate_sensitivities`)."""
    if _calibration_width(mask, tuple(kspace.shape[-2:])) >= ESPIRIT_MIN_CALIBRATION:
        return espirit_maps(kspace, mask, crop=crop, calibration=calibration)
    k = torch.from_numpy(np.asarray(kspace, dtype=np.complex64))
    return estimate_sensitivities(k, torch.from_numpy(np.asarray(mask))).numpy()


def pics(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, lam: float, iterations: int = 100) -> np.ndarray:
    """L1-wavelet parallel imaging + compressed sensing (SigPy's `L1WaveletRecon`): the complex
    (H, W) image of one slice of acquired k-space (C, H, W) with sensitivities (C, H, W)."""
    import sigpy.mri as mr

    s = scale_of(kspace)
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float32), kspace.shape[-2:]).copy()
    k = (np.asarray(kspace, dtype=np.complex64) / s) * weights
    x = mr.app.L1WaveletRecon(k, maps, lamda=float(lam), weights=weights, max_iter=int(iterations),
                              show_pbar=False).run()
    return np.asarray(x, dtype=np.complex64) * s


# Candidates for the PICS weight chosen per scan by k-space cross-validation
# (`pics_weight_by_cross_validation`): the grid the validation tuning searched, one step wider
# at each end
PICS_WEIGHT_CANDIDATES = (0.001, 0.003, 0.01, 0.03, 0.1)
CROSS_VALIDATION_FOLDS = 2
CROSS_VALIDATION_FRACTION = 0.1  # of the acquired samples, held out per fold (never the calibration region)


def _held_out_folds(mask: np.ndarray, shape: tuple[int, int], folds: int, fraction: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """`folds` disjoint (H, W) boolean sets of acquired samples outside the calibration region,
    each `fraction` of all acquired samples: whole lines for a line mask (as a scanner drops them),
    single samples for a 2D sampling pattern."""
    grid = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    outside = grid & (acs_window(torch.from_numpy(np.asarray(mask)), shape).numpy() == 0)
    lines = bool((grid == grid.any(0, keepdims=True)).all())
    units = np.flatnonzero(outside.any(0)) if lines else np.flatnonzero(outside.reshape(-1))
    per_unit = shape[0] if lines else 1
    size = max(1, int(round(fraction * grid.sum() / per_unit)))
    if units.size < folds * size + 1:
        raise InputError(f"too few acquired samples outside the calibration region ({units.size} "
                         f"{'lines' if lines else 'samples'}) to hold out {folds} x {size} for cross-validation")
    units = rng.permutation(units)
    out = []
    for f in range(folds):
        held = np.zeros(shape, dtype=bool)
        chosen = units[f * size:(f + 1) * size]
        if lines:
            held[:, chosen] = True
        else:
            held.reshape(-1)[chosen] = True
        out.append(held & grid)
    return out


def pics_weight_by_cross_validation(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray,
                                    candidates: tuple[float, ...] = PICS_WEIGHT_CANDIDATES,
                                    folds: int = CROSS_VALIDATION_FOLDS, fraction: float = CROSS_VALIDATION_FRACTION,
                                    iterations: int = 100, seed: int = 0) -> tuple[float, dict[float, float]]:
    """The PICS weight of one slice chosen from the scan's own data: for each fold, a `fraction`
    of the acquired lines outside the calibration region is held out, PICS runs on the rest with
    each candidate weight, and predicts the held-out samples (M_h F S x); the weight with the
    least squared prediction error summed over the folds wins. Returns it and each candidate's
    error relative to the held-out samples' energy. Why: a weight tuned on validation phantoms is
    a compromise (0.01 on the real phantoms, 0.003 on brain slices); the noise on the held-out
    samples adds the same amount to every candidate's error, so the argmin estimates the weight
    of least k-space error on the unacquired samples near them. Folds are seeded by `seed`."""
    shape = tuple(kspace.shape[-2:])
    rng = np.random.default_rng(seed)
    grid = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    k = np.asarray(kspace, dtype=np.complex64) * grid
    sensitivity = torch.from_numpy(np.asarray(maps, dtype=np.complex64))
    errors = dict.fromkeys((float(c) for c in candidates), 0.0)
    energy = 0.0
    for held in _held_out_folds(mask, shape, folds, fraction, rng):
        kept = grid & ~held
        k_kept = k * kept
        energy += float(np.sum(np.abs(k[:, held]) ** 2))
        for lam in errors:
            x = pics(k_kept, kept, maps, lam, iterations)
            pred = fft2c(sensitivity * torch.from_numpy(x)).numpy()
            errors[lam] += float(np.sum(np.abs(pred[:, held] - k[:, held]) ** 2))
    relative = {lam: e / max(energy, 1e-30) for lam, e in errors.items()}
    return min(relative, key=lambda lam: relative[lam]), relative


def network_pics(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, lam: float, mu: float,
                 prior: np.ndarray, iterations: int = 100, step: str = "power") -> np.ndarray:
    """PICS with the network's image as a second prior: the complex (H, W) minimiser of
    1/2 ||M F S x - y||^2 + lam ||W x||_1 + mu/2 ||x - prior||^2 (W SigPy's Daubechies-4 wavelets,
    as `pics`), started from `prior`, by SigPy's accelerated proximal gradient
    (`sigpy.app.LinearLeastSquares` with `z`; why SigPy: the same solver and wavelets as the PICS
    baseline, so the two differ only by the prior). mu = 0 is `pics` started from `prior`.

    `step` "power": SigPy's default step, 1 / the largest eigenvalue of A^H A + mu estimated by 30
    power iterations (each costs a gradient step); "bound": 1 / (max over pixels of sum_c |S_c|^2
    + mu), an upper bound of that eigenvalue (the FFT is unitary and the mask at most 1), so the
    step is never too long and the power iterations are saved."""
    if step not in ("power", "bound"):
        raise ValueError(f"step must be power or bound, got {step!r}")
    import sigpy as sp
    import sigpy.mri as mr

    s = scale_of(kspace)
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float32), kspace.shape[-2:]).copy()
    y = (np.asarray(kspace, dtype=np.complex64) / s) * weights
    A = mr.linop.Sense(np.asarray(maps, dtype=np.complex64), weights=weights)
    W = sp.linop.Wavelet(A.ishape, wave_name="db4")
    proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, float(lam)), W)
    z = np.asarray(prior, dtype=np.complex64) / s
    alpha = None
    if step == "bound":
        largest = float((np.abs(np.asarray(maps)) ** 2).sum(0).max()) + float(mu)
        alpha = 1.0 / largest if largest > 0 else 1.0  # A = 0 and mu = 0: any step (SigPy's choice)
    x = sp.app.LinearLeastSquares(A, y, x=z.copy(), proxg=proxg, lamda=float(mu), z=z, max_iter=int(iterations),
                                  alpha=alpha, show_pbar=False).run()
    return np.asarray(x, dtype=np.complex64) * s


def combine_with_pics(network_image: np.ndarray, coil_images: np.ndarray, kspace: np.ndarray, mask: np.ndarray,
                      maps: np.ndarray, blend: float | None = None, weight: float | None = None,
                      region: str = PICS_REGION, mode: str | None = None, mu: float = NETWORK_PICS_MU,
                      solver: str = "shipped") -> np.ndarray:
    """The shipped multi-coil image of one slice: the network's (H, W) image (the RSS of its
    (C, H, W) complex `coil_images`) combined with PICS (ESPIRiT `maps`, `weight` None:
    `pics_weight_for(mask)`), mode "joint" (`network_pics` at `mu`, the coil images combined by
    the maps as its prior) or "average" (`blend_with_pics`); None: `pics_mode_for(mask)`.
    (1 - a) x network + a x that image, a = `blend` (None: `pics_blend_for(mask, mode)`) on the
    object or everywhere (`region`). `solver`: a key of `SOLVERS` (iterations and step)."""
    check_solver(solver)
    mode = pics_mode_for(mask) if mode is None else mode
    if mode not in PICS_MODES:
        raise InputError(f"PICS mode must be one of {', '.join(PICS_MODES)}, got {mode!r}")
    if mode == "average":
        return blend_with_pics(network_image, kspace, mask, maps, blend, weight, region, solver)
    blend = pics_blend_for(mask, mode) if blend is None else float(blend)
    if blend <= 0:
        return np.asarray(network_image, dtype=np.float32)
    w = pics_weight_for(mask) if weight is None else float(weight)
    prior = (np.asarray(coil_images, dtype=np.complex64) * np.conj(np.asarray(maps, dtype=np.complex64))).sum(0)
    joint = np.abs(network_pics(kspace, mask, maps, w, mu, prior, *SOLVERS[solver])).astype(np.float32)
    if not plausible_energy(joint, kspace, mask):
        return np.asarray(network_image, dtype=np.float32)
    return blend_images(network_image, joint, blend, region)


# Why a guard: a SENSE-type solve can run away where the maps cannot unfold the aliasing (2 coils at
# 4x with maps that do not fit the scan: PICS's image had 4.7 times the energy of the acquired
# samples on the in-vivo body-coil test scan in 0.23, and the shipped combination scored 10 dB).
# With unit-RSS maps, a solution's energy is that of its full k-space; with the centre of
# k-space acquired, an MR image keeps most of its energy there, so a solution whose unacquired
# k-space holds more energy than the acquired samples (ratio > 2) is not an image of the scan.
# On every validation and training scan the ratio is at most 1.8 (PICS alone, 4x and 8x).
ENERGY_RATIO_LIMIT = 2.0


def plausible_energy(image: np.ndarray, kspace: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the (H, W) solution `image` (a SENSE combination with unit-RSS maps) has at most
    `ENERGY_RATIO_LIMIT` times the energy of the acquired samples of `kspace`; logs a warning if not."""
    acquired = float(np.sum(np.abs(np.asarray(kspace) * np.asarray(mask)) ** 2))
    ratio = float(np.sum(np.abs(np.asarray(image, dtype=np.float64)) ** 2)) / max(acquired, 1e-30)
    if ratio > ENERGY_RATIO_LIMIT:
        logger.warning("PICS's image has %.1f times the energy of the acquired samples (the maps cannot "
                       "unfold this slice): the network's image is kept without it", ratio)
        return False
    return True


def gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A 2D Gaussian of `sigma` pixels on (H, W), edges mirrored (d c b a | a b c d), taps to 4
    sigma: SciPy's `ndimage.gaussian_filter` (tested against it), written here because the bundle's
    run-time code does not import SciPy (tests/test_architecture.py)."""
    radius = int(4.0 * float(sigma) + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / float(sigma)) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        index = np.mod(np.arange(-radius, n + radius), 2 * n)  # mirrored as often as the kernel needs
        padded = np.take(out, np.where(index >= n, 2 * n - 1 - index, index), axis=axis)
        out = sum(t * np.take(padded, np.arange(i, i + n), axis=axis) for i, t in enumerate(taps))
    return np.asarray(out, dtype=np.float32)


def object_support(image: np.ndarray, threshold: float = 0.1, sigma: float = 2.0) -> np.ndarray:
    """A soft (H, W) map in [0, 1] of where the object is: the magnitude smoothed by a Gaussian of
    `sigma` pixels, above `threshold` x its maximum, the edge smoothed by the same Gaussian."""
    smooth = gaussian_smooth(image, sigma)
    inside = (smooth > threshold * float(smooth.max())).astype(np.float32)
    return np.clip(gaussian_smooth(inside, sigma), 0.0, 1.0)


def blend_with_pics(network_image: np.ndarray, kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray,
                    blend: float | None = None, weight: float | None = None, region: str = PICS_REGION,
                    solver: str = "shipped") -> np.ndarray:
    """(1 - blend) x the network's magnitude + blend x PICS's (ESPIRiT `maps`, `weight` None:
    `pics_weight_for(mask)`) of one slice of acquired k-space: the (H, W) image. `blend` None:
    `pics_blend_for(mask)`. `region` "object": the blend only where `object_support` of the
    network's image is, the network alone elsewhere. PICS from zero by `network_pics` with mu 0 and
    `SOLVERS[solver]` ("0.18": `pics`'s own solve, SigPy's `L1WaveletRecon`, to its run-to-run noise)."""
    check_solver(solver)
    blend = pics_blend_for(mask) if blend is None else float(blend)
    if blend <= 0:
        return np.asarray(network_image, dtype=np.float32)
    w = pics_weight_for(mask) if weight is None else float(weight)
    zero = np.zeros(np.asarray(kspace).shape[-2:], np.complex64)
    p = np.abs(network_pics(kspace, mask, maps, w, 0.0, zero, *SOLVERS[solver])).astype(np.float32)
    if not plausible_energy(p, kspace, mask):
        return np.asarray(network_image, dtype=np.float32)
    return blend_images(network_image, p, blend, region)


def blend_images(network_image: np.ndarray, pics_image: np.ndarray, blend: float, region: str = PICS_REGION) -> np.ndarray:
    """(1 - a) x network + a x PICS, a = `blend` everywhere ("all") or `blend` x `object_support`
    of the network's image ("object")."""
    if region not in PICS_REGIONS:
        raise InputError(f"blend region must be all or object, got {region!r}")
    net = np.asarray(network_image, dtype=np.float32)
    a = blend * object_support(net) if region == "object" else np.float32(blend)
    return ((1.0 - a) * net + a * np.asarray(pics_image, dtype=np.float32)).astype(np.float32)


def sense(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, weight: float, iterations: int = 20) -> np.ndarray:
    """CG-SENSE with Tikhonov `weight` (x ||x||^2, maps of unit RSS) of one slice: (H, W) complex."""
    s = scale_of(kspace)
    m = torch.from_numpy(np.broadcast_to(np.asarray(mask, dtype=np.float32), kspace.shape[-2:]).copy())
    k = torch.from_numpy(np.asarray(kspace, dtype=np.complex64) / s) * m
    op = CartesianSense(torch.from_numpy(np.asarray(maps, dtype=np.complex64)), m)
    # maps of unit (or lower) RSS bound ||A^H A|| by 1: the weight is used as it is, without the
    # power iteration of `cg_sense` (which cost 6 s of 12 on a 256 x 256 slice)
    x = regularised_least_squares(op, k, torch.zeros(k.shape[-2:], dtype=k.dtype), float(weight), iterations)
    return x.numpy() * s


def classical(method: str, kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None, weight: float,
              iterations: int | None = None) -> np.ndarray:
    """One baseline on one slice: the (H, W) magnitude. `maps` None: `sensitivities` (ESPIRiT)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    full = np.broadcast_to(np.asarray(mask, dtype=bool), kspace.shape[-2:])
    acquired = np.asarray(kspace, dtype=np.complex64) * full
    if method == "zero_filled":
        return rss(ifft2c(torch.from_numpy(acquired)), 0).numpy()
    if maps is None:
        maps = sensitivities(acquired, mask)
    if method == "pics":
        return np.abs(pics(acquired, mask, maps, weight, iterations or 100)).astype(np.float32)
    return np.abs(sense(acquired, mask, maps, weight, iterations or 20)).astype(np.float32)
