"""A self-ensemble of the PET network over the scan's symmetries, on the VALIDATION subject only.

Why: at 10 % the shipped network + EM is +0.22 dB over the tuned OSEM on test (issue 21 asks for
+3 dB; `pet_ceiling.py` puts a perfect denoiser of the network's input at +1.4 dB), and no GPU is
lent to train a bigger network. The 2D scan is symmetric under the 8 rotations by 90 degrees and
reflections of the slice (96 views over 180 degrees, a multiple of 4; the ring is round), and the
network was trained with them as augmentation, so each transformed pass is a fair estimate and
their mean (mapped back) averages part of the network's own errors out (Lim et al., EDSR, CVPR-W
2017: +0.1 to 0.2 dB). `bundle.inference.pet.dihedral_mean`; 8 network passes per slice, the OSEM
and the EM pass are unchanged. (The same idea for the multi-coil network, where the symmetries
are fewer and its final PICS solve dominates, did not pass its rule: `multicoil_self_ensemble.py`.)

Candidates: the shipped reconstruction (configs/inference_pet.yaml, `models/model_pet.pt`, one
EM pass) with one network pass, and with the 8-pass self-ensemble (`--pet_self_ensemble true`).
Scored as `pet_lesion_weight.py` scores weights: the validation phantom (IXI048, seed 100), 4 noise
realisations, PSNR / SSIM / bias of realisation 0, CRC of the hot and cold lesions against OSEM's
at the network's background variability.

Rule, written 2026-12-08 before any candidate was scored: the self-ensemble becomes the default
(`pet_self_ensemble: true`) only if at 10 % its PSNR is at least 0.10 dB above one pass's, its
SSIM at most 0.002 below, its hot- and cold-CRC gaps to OSEM at matched noise each at most 0.01
below one pass's, and at 25 % and 5 % its PSNR at most 0.05 dB below. Otherwise the option stays,
default off. The test subjects are not read by this study.

    python scripts/studies/pet_self_ensemble.py models/model_pet.pt

Result (2-core CPU, 7 minutes; the 0.17 weights): **the rule keeps one pass.** At 10 % the
self-ensemble is +0.04 dB (25.29 against 25.24 dB) and +0.0007 SSIM, hot-CRC gap -0.010 (0.622
against OSEM's 0.633 at its noise; one pass 0.637 / 0.637), cold gap +0.010; +0.03 dB at 25 %,
+0.05 dB at 5 %. Its background variability is lower by 0.3 to 0.5 points (24.4 against 24.9 % at
10 %). The network's own errors that differ between the 8 orientations are a small part of its
error here; the rest is shared (the noise it keeps and the blur it cannot undo: `pet_ceiling.py`).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bundle.errors import install_excepthook  # noqa: E402

LABELS = {False: "one pass", True: "self-ensemble"}


def main(argv: list[str] | None = None) -> int:
    from pet_lesion_weight import print_scores, print_table, validation_scores

    from bundle.data.demo import DEMO_DIR, DEMO_SPLIT
    from bundle.reporting.pet import load_case, pet_reconstructor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="the PET weights (models/model_pet.pt)")
    ap.add_argument("--fractions", default="0.1,0.25,0.05")
    ap.add_argument("--realisations", type=int, default=4)
    args = ap.parse_args(argv)
    case = load_case(os.path.join(str(DEMO_DIR), "ixi_t1_2mm", f"{DEMO_SPLIT['validation'][0]}-T1_ds.nii.gz"), seed=100)
    rec = pet_reconstructor(ROOT, args.ckpt, "ckpt")
    rows: dict = {}
    for f in (float(v) for v in args.fractions.split(",")):
        for ensemble in (False, True):
            rec.self_ensemble = ensemble
            rows[(ensemble, f)] = validation_scores(rec, case, f, args.realisations)
            print_scores(LABELS[ensemble], f, rows[(ensemble, f)])
    print_table({(LABELS[e], f): s for (e, f), s in rows.items()}, "network")
    if (False, 0.1) in rows:
        one, ens = rows[(False, 0.1)], rows[(True, 0.1)]
        hot = (ens["net_hot"] - ens["osem_hot"]) - (one["net_hot"] - one["osem_hot"])
        cold = (ens["net_cold"] - ens["osem_cold"]) - (one["net_cold"] - one["osem_cold"])
        others = [rows[(True, f)]["psnr"] - rows[(False, f)]["psnr"] for (e, f) in rows if e and f != 0.1]
        ok = (ens["psnr"] - one["psnr"] >= 0.10 and ens["ssim"] >= one["ssim"] - 0.002 and hot >= -0.01
              and cold >= -0.01 and all(d >= -0.05 for d in others))
        print(f"\nat 10 %: PSNR {ens['psnr'] - one['psnr']:+.2f} dB, SSIM {ens['ssim'] - one['ssim']:+.4f}, "
              f"hot gap {hot:+.3f}, cold gap {cold:+.3f}; PSNR at the other levels "
              f"{', '.join(f'{d:+.2f}' for d in others)} dB: the self-ensemble "
              f"{'becomes the default' if ok else 'stays off'} by the rule")
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
