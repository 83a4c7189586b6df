"""Does averaging the multi-coil network with PICS help? Scored on VALIDATION only (the real
validation phantoms and the simulated IXI048 of `multicoil_validation.py`, its masks, metrics and
PICS weights): for each weight a in 0, 0.1, ..., 1 the image (1 - a) * network + a * PICS, the four
settings' SSIM / PSNR, and the worst setting's target ratio min(dSSIM / 0.05, dPSNR / 2) over the
better of zero-filled and PICS (a = 0 is the network as shipped, a = 1 is PICS).

Rule, written before any blend was scored: a blend would ship only if its worst-setting target
ratio on validation is at least 0.2 above the network's.

    python scripts/studies/multicoil_pics_blend.py models/model_multicoil.pt
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from multicoil_validation import PICS_WEIGHTS, validation_sets

    from bundle.networks import load_checkpoint
    from bundle.reporting.multicoil import MapsCache, baseline_method, evaluate, score, varnet_method
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="multi-coil weights (the cpu variant)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil"))
    args = ap.parse_args(argv)
    sets = validation_sets(args.shared)
    net = load_checkpoint(VarNet(**varnet_variant("cpu")), args.ckpt)
    cache = MapsCache()
    alphas = np.round(np.linspace(0, 1, 11), 2)
    results = {}  # (kind, acc) -> {alpha: (ssim, psnr)}, and the zero-filled score
    for acc in (4.0, 8.0):
        for kind, cases in sets.items():
            methods = {"net": varnet_method(net, cache=cache), "zf": baseline_method("zero_filled", 0.0),
                       "pics": baseline_method("pics", PICS_WEIGHTS[(kind, acc)], cache=cache)}
            _, _, kept = evaluate(cases, methods, acc, desc=f"{kind} {acc:g}x", keep=lambda c, i: True)
            per_case: dict = {}
            for (case, _), im in kept.items():
                row = per_case.setdefault(case, {a: [] for a in alphas} | {"zf": []})
                row["zf"].append(score(im["zf"], im["reference"]))
                for a in alphas:
                    row[a].append(score((1 - a) * im["net"] + a * im["pics"], im["reference"]))
            results[(kind, acc)] = {k: tuple(np.mean([np.mean(r[k], 0) for r in per_case.values()], 0))
                                    for k in list(alphas) + ["zf"]}
    print("| a | " + " | ".join(f"{k} {a:g}x" for (k, a) in results) + " | worst target ratio |")
    print("|---" * (len(results) + 2) + "|")
    for a in alphas:
        cells, ratios = [], []
        for r in results.values():
            s, p = r[a]
            best_s, best_p = max(r["zf"][0], r[1.0][0]), max(r["zf"][1], r[1.0][1])
            ratios.append(min((s - best_s) / 0.05, (p - best_p) / 2.0))
            cells.append(f"{s:.4f} / {p:.2f}")
        print(f"| {a:g} | " + " | ".join(cells) + f" | {min(ratios):+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
