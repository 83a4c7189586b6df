"""Preliminary (groundwork of the multi-coil issue): the classical bar on REAL multi-coil scans: zero-filled RSS, CG-SENSE and L1-wavelet SENSE
(PICS), both with sensitivities estimated from the calibration lines, on the fully sampled
multi-coil files of ../shared/data/kspace/multicoil, retrospectively undersampled (every coil with
the same equispaced mask, fastMRI centre fractions).

    python scripts/studies/multicoil_baselines.py [--accelerations 4,8] [--lambdas 1e-4,3e-4,1e-3,3e-3]

The PICS weight and CG-SENSE's Tikhonov weight are chosen per acceleration on the phantoms (mean
SSIM), never on the in-vivo brain, which is the test case. Metrics as in the multi-coil issue: scikit-image SSIM and PSNR on the whole
image, data range the maximum of the fully sampled RSS. The methods work on the RSS scale of the
data (each file's k-space divided by its fully sampled RSS maximum). Prints one table (markdown).

Measured (2-core CPU, sensitivities as the calibration lines' low-resolution images over their
RSS): on the 16-channel brain at 4x, zero-filled RSS 0.6173 / 21.16 dB, CG-SENSE 0.6370 / 21.94,
PICS 0.5818 / 21.37; at 8x 0.4254 / 16.65, 0.3583 / 15.67, 0.3326 / 16.39. The solvers are not the
limit: with maps from the fully sampled coil images (an oracle, not a method) CG-SENSE reaches
0.9855 / 38.49 dB and PICS 0.9785 / 40.93 dB at 4x. The maps from 11 calibration lines of 128 are;
the held-out check's PICS with calibration maps reached 0.799 at 4x on other scans. ESPIRiT maps
(a kernel calibration that extrapolates beyond the calibration block) are next.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.data.fastmri import read_fastmri  # noqa: E402
from bundle.errors import InputError, format_error  # noqa: E402
from bundle.physics.mri import cartesian_mask, default_center_fraction, ifft2c  # noqa: E402
from bundle.physics.mri_sense import cg_sense, estimate_sensitivities, l1_wavelet_sense, rss  # noqa: E402
from bundle.reporting.multicoil import score as metrics  # noqa: E402  (scikit-image SSIM, PSNR; range = reference max)
from bundle.transforms.base import slice_seed  # noqa: E402

MULTICOIL = os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil")
TEST = ("pulseq_brain_16ch.h5",)  # in vivo: never used to choose anything
VALIDATION = ("pulseq_phantom_16ch.h5", "pulseq_phantom_32ch_64.h5", "pulseq_bottle_phantom_4ch_sol13.h5")


def case(path: str, acceleration: float):
    """(reference RSS, undersampled k-space (C, H, W), mask (W,), sensitivities (C, H, W)) on the
    RSS scale, the mask seeded by the file name (the same for every method), the sensitivities
    estimated once from its calibration lines for every method and weight."""
    f = read_fastmri(path)
    kspace = torch.from_numpy(f.kspace[0]).to(torch.complex128)  # (C, H, W), one slice
    ref = rss(ifft2c(kspace), 0)
    scale = float(ref.max())
    kspace, ref = kspace / scale, ref / scale
    rng = np.random.default_rng(slice_seed(os.path.basename(path), acceleration))
    mask = cartesian_mask(kspace.shape[-1], acceleration, default_center_fraction(acceleration), "equispaced", rng)
    kspace = kspace * mask.to(torch.float64)
    return ref.numpy(), kspace, mask, estimate_sensitivities(kspace, mask)


def reconstruct(method: str, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, lam: float) -> np.ndarray:
    """One method's magnitude image; `lam`: the PICS L1 weight, or CG-SENSE's Tikhonov weight
    (relative to ||A^H A||; 10 conjugate-gradient steps)."""
    if method == "zero-filled RSS":
        return rss(ifft2c(kspace), 0).numpy()
    if method == "CG-SENSE":
        return cg_sense(kspace, mask, maps, iterations=10, weight=lam).abs().numpy()
    return l1_wavelet_sense(kspace, mask, maps, lam, iterations=100).abs().numpy()


def tune(method: str, cases: list, weights: list[float]) -> float:
    """The weight with the best mean SSIM over `cases` (the phantoms)."""
    score = {w: float(np.mean([metrics(reconstruct(method, k, m, s, w), r)[0] for r, k, m, s in cases]))
             for w in weights}
    return max(score, key=lambda w: score[w])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accelerations", default="4,8")
    p.add_argument("--lambdas", default="1e-4,3e-4,1e-3,3e-3", help="PICS L1 weights to choose from")
    p.add_argument("--cg-weights", default="0,0.01,0.05,0.2", help="CG-SENSE Tikhonov weights to choose from")
    p.add_argument("--data", default=MULTICOIL)
    args = p.parse_args(argv)
    try:
        accelerations = [float(a) for a in args.accelerations.split(",")]
        lambdas = [float(v) for v in args.lambdas.split(",")]
        cg_weights = [float(v) for v in args.cg_weights.split(",")]
        for name in TEST + VALIDATION:
            if not os.path.isfile(os.path.join(args.data, name)):
                raise InputError(f"{os.path.join(args.data, name)}: file not found (the shared multi-coil data)")
        print("| acceleration | case | coils | method | SSIM | PSNR (dB) | s |")
        print("|---|---|---|---|---|---|---|")
        for acc in accelerations:
            val = [case(os.path.join(args.data, n), acc) for n in VALIDATION]
            weight = {"zero-filled RSS": 0.0, "CG-SENSE": tune("CG-SENSE", val, cg_weights),
                      "PICS": tune("PICS", val, lambdas)}
            for name in TEST:
                ref, kspace, mask, maps = case(os.path.join(args.data, name), acc)
                for method, w in weight.items():
                    t0 = time.perf_counter()
                    image = reconstruct(method, kspace, mask, maps, w)
                    ssim, psnr = metrics(image, ref)
                    label = f"{method} (weight {w:g}, chosen on the phantoms)" if method != "zero-filled RSS" else method
                    print(f"| {acc:g}x | {name} | {kspace.shape[0]} | {label} | {ssim:.4f} | {psnr:.2f} | "
                          f"{time.perf_counter() - t0:.2f} |")
    except (InputError, ValueError) as e:
        print(f"error: {format_error(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
