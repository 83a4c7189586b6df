"""Multi-coil weights scored on VALIDATION only (never the in-vivo test scans): the two real
validation phantoms of configs/train_multicoil_real.yaml and the simulated IXI048, at 4x and 8x,
with compare.py's masks and metrics (scikit-image SSIM / PSNR, data range = the reference
maximum). For each of the four settings it prints the network's scores beside zero-filled RSS and
PICS (at the weights `scripts/compare.py --multicoil` tunes on validation), the margins over the
better of the two, the issue's target ratio min(dSSIM / 0.05, dPSNR / 2) (>= 1 meets the
target), and the least-squares scale of the network's images to the reference (mean over slices;
above 1: too dark). The model card's shipping rules compare the mean of the four settings and the worst
setting's target ratio.

    python scripts/studies/multicoil_validation.py models/model_multicoil.pt
    python scripts/studies/multicoil_validation.py /tmp/mc012.pt --final-dc false   # 0.12 weights
    python scripts/studies/multicoil_validation.py /tmp/mc011.pt --variant learned-cpu
    python scripts/studies/multicoil_validation.py models/model_multicoil.pt --pics-blend 0.3  # 0.14's average
    python scripts/studies/multicoil_validation.py models/model_multicoil.pt --pics-blend 0.3 --pics-region object  # 0.15
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

REAL_VALIDATION = ("pulseq_phantom_32ch_64.h5", "pulseq_bottle_phantom_4ch_sol22.h5")
# PICS weights chosen by `scripts/compare.py --multicoil` on validation (its tuning_multicoil_*.json):
# real phantoms 0.01 at 4x and 0.03 at 8x, the simulated IXI048 0.003 at both
PICS_WEIGHTS = {("real", 4.0): 0.01, ("real", 8.0): 0.03, ("simulated", 4.0): 0.003, ("simulated", 8.0): 0.003}


def _mean(per_case: dict) -> tuple[float, float]:
    return (float(np.mean([v["ssim"] for v in per_case.values()])),
            float(np.mean([v["psnr"] for v in per_case.values()])))


def validation_parser():
    """train.yaml + train_multicoil.yaml, parsed, with the demo datalist in place."""
    from monai.bundle import ConfigParser

    from bundle.data.demo import ensure_datalist

    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", "train.yaml"), os.path.join(ROOT, "configs", "train_multicoil.yaml")])
    parser["bundle_root"] = ROOT
    ensure_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"))
    return parser


def validation_sets(shared: str, parser=None) -> dict:
    """{"real": the real validation phantoms, "simulated": IXI048 with validation's simulated coils}."""
    from bundle.data import load_datalist
    from bundle.reporting.multicoil import real_cases, simulated_cases

    parser = parser or validation_parser()
    items = load_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"), "validation")
    return {"real": real_cases([os.path.join(shared, f) for f in REAL_VALIDATION]),
            "simulated": simulated_cases(parser, items)}


def main(argv: list[str] | None = None) -> int:
    from bundle.networks import load_checkpoint, metadata_of, safe_load
    from bundle.parallel_imaging import PICS_REGIONS
    from bundle.reporting.multicoil import (
        MapsCache,
        baseline_method,
        evaluate,
        varnet_method,
    )
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="+", help="multi-coil weights")
    ap.add_argument("--variant", default="cpu", help="varnet variant of the weights (cpu, gpu, learned-cpu)")
    ap.add_argument("--final-dc", choices=("true", "false"), default=None,
                    help="switch the final hard data consistency on or off for these weights (default: the variant's)")
    ap.add_argument("--pics-blend", type=float, default=0.0,
                    help="score (1 - a) x network + a x PICS (the PICS of this table) instead of the network alone")
    ap.add_argument("--pics-region", choices=PICS_REGIONS, default="all",
                    help="average everywhere (0.14, the model card's step 4) or on the object only (0.15, as shipped)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil"))
    args = ap.parse_args(argv)
    sets = validation_sets(args.shared)
    cache = MapsCache()
    baselines: dict = {}
    for acc in (4.0, 8.0):
        for kind, cases in sets.items():
            methods = {"zero-filled": baseline_method("zero_filled", 0.0),
                       "PICS": baseline_method("pics", PICS_WEIGHTS[(kind, acc)], cache=cache)}
            per_case, _, _ = evaluate(cases, methods, acc, desc=f"baselines {kind} {acc:g}x")
            baselines[(kind, acc)] = {m: _mean(per_case[m]) for m in methods}
    for ckpt in args.ckpt:
        settings = varnet_variant(args.variant)
        trained = bool(((metadata_of(safe_load(ckpt, "cpu")) or {}).get("architecture") or {}).get("final_dc", False))
        settings["final_dc"] = trained  # the weights load as they were trained ...
        net = load_checkpoint(VarNet(**settings), ckpt)
        # ... and the final data consistency (no weights) is switched as asked
        final_dc = trained if args.final_dc is None else args.final_dc == "true"
        net.final_dc = final_dc
        name = f"{os.path.basename(ckpt)} (final DC {'on' if final_dc else 'off'}" + (
            f", {1 - args.pics_blend:g} x network + {args.pics_blend:g} x PICS on {args.pics_region})" if args.pics_blend > 0 else ")")
        scores, ratios = [], []
        for acc in (4.0, 8.0):
            for kind, cases in sets.items():
                method = varnet_method(net, cache=cache, pics_blend=args.pics_blend, pics_weight=PICS_WEIGHTS[(kind, acc)],
                                        pics_region=args.pics_region, pics_mode="average", solver="0.18")
                per_case, _, kept = evaluate(cases, {"net": method}, acc,
                                             desc=f"{kind} {acc:g}x", keep=lambda case, i: True)
                s, p = _mean(per_case["net"])
                # the least-squares scale a * net that best fits the reference (1: no intensity bias)
                gain = np.mean([float((v["net"] * v["reference"]).sum() / (v["net"] ** 2).sum()) for v in kept.values()])
                scores.append((s, p))
                base = baselines[(kind, acc)]
                ds, dp = s - max(v[0] for v in base.values()), p - max(v[1] for v in base.values())
                ratios.append(min(ds / 0.05, dp / 2.0))
                print(f"{name} {kind} {acc:g}x: {s:.4f} / {p:.2f} dB; "
                      + "; ".join(f"{m} {v[0]:.4f} / {v[1]:.2f} dB" for m, v in base.items())
                      + f"; margin over the better {ds:+.4f} / {dp:+.2f} dB, target ratio {ratios[-1]:+.2f}; "
                      f"least-squares scale to the reference {gain:.3f}", flush=True)
        mean = np.mean(scores, 0)
        print(f"{name} mean of the four: {mean[0]:.4f} / {mean[1]:.2f} dB; worst target ratio {min(ratios):+.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
