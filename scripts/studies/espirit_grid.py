"""ESPIRiT on a coarse grid: what it costs in quality and saves in time, on VALIDATION scans only.

For the real validation phantoms of `multicoil_validation.py` as acquired (64 x 64 and 256 x 256)
and zero-padded in k-space to 4 times their side (the same images on a finer grid, like a fastMRI
brain's 640 x 320), at 4x and 8x (compare.py's masks): the seconds of ESPIRiT on the full grid and
on a grid of at most `--grid` samples (`bundle.parallel_imaging.espirit_maps(grid=...)`), the
maps' relative difference, and the shipped reconstruction (network + PICS) with each, scored
against the fully sampled RSS (scikit-image SSIM / PSNR, data range its maximum).

Rule, written before the first run: the coarse grid becomes the default only if, on every case
and acceleration, the shipped reconstruction's PSNR moves by less than 0.1 dB and its SSIM by
less than 0.002.

    python scripts/studies/espirit_grid.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402


def zero_pad(kspace: np.ndarray, factor: int) -> np.ndarray:
    """(C, H, W) k-space in the centre of a (C, factor H, factor W) grid (sinc interpolation)."""
    c, h, w = kspace.shape
    out = np.zeros((c, h * factor, w * factor), np.complex64)
    top, left = (h * factor) // 2 - h // 2, (w * factor) // 2 - w // 2
    out[:, top:top + h, left:left + w] = kspace
    return out * factor  # the same image values on the finer grid (orthonormal FFTs)


def main(argv: list[str] | None = None) -> int:
    import torch
    from multicoil_validation import REAL_VALIDATION

    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import blend_with_pics, espirit_maps
    from bundle.physics.mri import ifft2c
    from bundle.physics.mri_sense import rss
    from bundle.reporting.multicoil import file_mask, real_cases, score
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--factor", type=int, default=4, help="zero-padding factor of the larger versions")
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "models", "model_multicoil.pt"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil"))
    args = ap.parse_args(argv)
    net = load_checkpoint(VarNet(**varnet_variant("cpu")), args.ckpt).eval()
    cases = real_cases([os.path.join(args.shared, f) for f in REAL_VALIDATION])
    print("| case | grid | acc | ESPIRiT s full / coarse | maps rel. diff | shipped full grid | shipped coarse | dSSIM / dPSNR |")
    print("|---|---|---|---|---|---|---|---|")
    worst = (0.0, 0.0)
    for case in cases:
        for factor in (1, args.factor):
            full = zero_pad(case.slices[0], factor) if factor > 1 else case.slices[0]
            c, h, w = full.shape
            if max(h, w) <= args.grid:
                continue  # the coarse grid changes nothing here
            ref = rss(ifft2c(torch.from_numpy(full)), 0).numpy()
            for acc in (4.0, 8.0):
                mask = file_mask(case.name, w, acc)
                acquired = (full * mask).astype(np.complex64)
                seconds, maps, scores = {}, {}, {}
                for name, grid in (("full", None), ("coarse", args.grid)):
                    t = time.perf_counter()
                    maps[name] = espirit_maps(acquired, mask, crop=0.0, grid=grid)
                    seconds[name] = time.perf_counter() - t
                    with torch.no_grad():
                        image = net(torch.from_numpy(acquired)[None], torch.from_numpy(mask).view(1, 1, 1, -1),
                                    torch.from_numpy(maps[name])[None])[0, 0].numpy()
                    scores[name] = score(blend_with_pics(image, acquired, mask, maps[name], 0.3,  # 0.14's average
                                                           region="all", solver="0.18"), ref)
                diff = float(np.linalg.norm(maps["coarse"] - maps["full"]) / np.linalg.norm(maps["full"]))
                ds, dp = scores["coarse"][0] - scores["full"][0], scores["coarse"][1] - scores["full"][1]
                worst = (max(worst[0], abs(ds)), max(worst[1], abs(dp)))
                print(f"| {case.name} | {h} x {w} | {acc:g}x | {seconds['full']:.2f} / {seconds['coarse']:.2f} | "
                      f"{diff:.3f} | {scores['full'][0]:.4f} / {scores['full'][1]:.2f} | "
                      f"{scores['coarse'][0]:.4f} / {scores['coarse'][1]:.2f} | {ds:+.4f} / {dp:+.3f} |", flush=True)
    verdict = "adopt" if worst[0] < 0.002 and worst[1] < 0.1 else "keep the full grid"
    print(f"largest change: SSIM {worst[0]:.4f}, PSNR {worst[1]:.3f} dB -> {verdict} (rule: < 0.002 and < 0.1 dB)")
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
