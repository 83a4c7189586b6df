"""Multi-coil weights scored on VALIDATION only (never the in-vivo test scans): the two real
validation phantoms of configs/train_multicoil_real.yaml and the simulated IXI048, at 4x and 8x,
with compare.py's masks and metrics (scikit-image SSIM / PSNR, data range = the reference
maximum); the mean of the four settings is what the model card's shipping rule compared.

    python scripts/studies/multicoil_validation.py models/model_multicoil.pt
    python scripts/studies/multicoil_validation.py /tmp/mc011.pt --variant learned-cpu
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


def main(argv: list[str] | None = None) -> int:
    from monai.bundle import ConfigParser

    from bundle.data import load_datalist
    from bundle.networks import load_checkpoint
    from bundle.reporting.multicoil import MapsCache, evaluate, real_cases, simulated_cases, varnet_method
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="+", help="multi-coil weights")
    ap.add_argument("--variant", default="cpu", help="varnet variant of the weights (cpu, gpu, learned-cpu)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil"))
    args = ap.parse_args(argv)
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", "train.yaml"), os.path.join(ROOT, "configs", "train_multicoil.yaml")])
    parser["bundle_root"] = ROOT
    items = load_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"), "validation")
    sets = {"real": real_cases([os.path.join(args.shared, f) for f in REAL_VALIDATION]),
            "simulated": simulated_cases(parser, items)}
    cache = MapsCache()
    for ckpt in args.ckpt:
        net = load_checkpoint(VarNet(**varnet_variant(args.variant)), ckpt)
        scores = []
        for acc in (4.0, 8.0):
            for kind, cases in sets.items():
                per_case, _, _ = evaluate(cases, {"net": varnet_method(net, cache=cache)}, acc, desc=f"{kind} {acc:g}x")
                s = float(np.mean([v["ssim"] for v in per_case["net"].values()]))
                p = float(np.mean([v["psnr"] for v in per_case["net"].values()]))
                scores.append((s, p))
                print(f"{os.path.basename(ckpt)} {kind} {acc:g}x: {s:.4f} / {p:.2f} dB", flush=True)
        mean = np.mean(scores, 0)
        print(f"{os.path.basename(ckpt)} mean of the four: {mean[0]:.4f} / {mean[1]:.2f} dB", flush=True)
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
