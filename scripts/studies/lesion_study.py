"""Lesion fidelity and hallucination check: small synthetic lesions (discs of a few mm, contrast
-20% to +20% of the local tissue) inserted into held-out reference slices before undersampling;
per lesion size and contrast, the contrast each method recovers (reconstructed / true contrast)
and its contrast-to-noise ratio beside the reference's; and, on the same slices without lesions,
the false-structure energy each method puts at the same places.

    python scripts/studies/lesion_study.py --acceleration 4 --cs-lambda 0.0003 --contrasts=-0.2,-0.1,0.1,0.2

Writes OUTPUT_DIR/lesions_<R>x.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bundle.reporting.comparison import (  # noqa: E402
    add_report_arguments,
    cs_method,
    network_method,
    report_config,
    run_report,
    volume_slices,
    zero_filled_method,
)
from bundle.errors import InputError  # noqa: E402
from bundle.data.io import write_text_atomic  # noqa: E402
from bundle.physics.mri import undersample  # noqa: E402
from bundle.reporting.lesions import cnr, false_structure, insert_lesions, lesion_sites, recovered_contrast, ring  # noqa: E402
from bundle.networks import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_report_arguments(ap, ROOT)
    ap.add_argument("--cs-lambda", type=float, default=3e-4, help="CS weight (tuned on validation by compare.py)")
    ap.add_argument("--diameters-mm", default="4,6,10")
    ap.add_argument("--contrasts", default="-0.2,-0.1,0.1,0.2")
    ap.add_argument("--slices-per-volume", type=int, default=4)
    ap.add_argument("--lesions-per-slice", type=int, default=3)
    return run_report(run, ap.parse_args(argv))


def run(args) -> int:
    parser, items = report_config(args.config, ROOT, args.acceleration, args.mask_type, args.dataset_dir,
                                  args.datalist, args.split, args.overrides)
    diameters = [float(d) for d in args.diameters_mm.split(",")]
    contrasts = [float(c) for c in args.contrasts.split(",")]
    network = load_checkpoint(parser.get_parsed_content("network_def"), args.ckpt)
    methods = {"zero_filled": zero_filled_method(), "cs": cs_method(args.cs_lambda, args.cs_iterations),
               "network": network_method(network, data_consistency=True)}
    rec = defaultdict(list)  # (diameter, contrast, method) -> [(recovered ratio, cnr)]
    ref_cnr = defaultdict(list)  # (diameter, contrast) -> [reference cnr]
    halluc = defaultdict(list)  # (diameter, method) -> [false structure]
    rng = np.random.default_rng(0)
    for name, _, sl in volume_slices(parser, items, "lesion study"):
        n = sl["image"].shape[0]
        picks = [n * (k + 1) // (args.slices_per_volume + 1) for k in range(args.slices_per_volume)]
        for i in picks:
            ref, mask = sl["label"][i, 0], sl["mask"][i, 0, 0].bool()
            base_in = (sl["image"][i : i + 1], sl["kspace"][i : i + 1], sl["mask"][i : i + 1])
            base_out = {m: fn(*base_in)[0, 0].float() for m, fn in methods.items()}
            spacing = float(sl["pixel_spacing"][i].min())
            for d in diameters:
                radius = d / 2 / spacing
                sites = lesion_sites(ref, radius, args.lesions_per_slice, rng)
                if not sites:
                    continue
                for m, out in base_out.items():
                    halluc[(d, m)].extend(false_structure(out, ref, s) for s in
                                          insert_lesions(ref, sites, radius, 0.1)[1])
                for c in contrasts:
                    lesion_ref, discs = insert_lesions(ref, sites, radius, c)
                    zf, k = undersample(lesion_ref[None, None], mask)
                    inp = (zf.float(), torch.cat([k.real, k.imag], dim=1).float(), sl["mask"][i : i + 1])
                    rings = [ring(ref.shape, s, radius) for s in sites]
                    for disc_mask, bg in zip(discs, rings):
                        ref_cnr[(d, c)].append(cnr(lesion_ref, disc_mask, bg))
                    for m, fn in methods.items():
                        out = fn(*inp)[0, 0].float()
                        for disc_mask, bg in zip(discs, rings):
                            ratio = recovered_contrast(out, base_out[m], ref, disc_mask) / c
                            rec[(d, c, m)].append((ratio, cnr(out, disc_mask, bg)))
    if not rec:
        raise InputError("no lesion site found in tissue: the slices are too small for these diameters")

    acc = f"{args.acceleration:g}x"
    md = [f"Lesions at {acc} ({args.mask_type}); {len(items)} volumes of '{args.split}', "
          f"{args.slices_per_volume} slices each, up to {args.lesions_per_slice} lesions per slice. "
          "Recovered = reconstructed / true contrast (1 is perfect); CNR beside the reference's.\n",
          "| diameter (mm) | contrast | lesions | reference CNR | "
          + " | ".join(f"{m} recovered | {m} CNR" for m in methods) + " |",
          "|---|---|---|---|" + "---|---|" * len(methods)]
    rows = [["diameter_mm", "contrast", "method", "lesions", "recovered_mean", "recovered_std", "cnr_mean",
             "reference_cnr_mean"]]
    for d in diameters:
        for c in contrasts:
            if (d, c) not in ref_cnr:
                continue
            rc = float(np.mean(ref_cnr[(d, c)]))
            cells = []
            for m in methods:
                vals = np.array(rec[(d, c, m)])
                cells.append(f"{vals[:, 0].mean():.2f} ± {vals[:, 0].std():.2f} | {vals[:, 1].mean():.2f}")
                rows.append([d, c, m, len(vals), vals[:, 0].mean(), vals[:, 0].std(), vals[:, 1].mean(), rc])
            md.append(f"| {d:g} | {c:+.0%} | {len(ref_cnr[(d, c)])} | {rc:.2f} | " + " | ".join(cells) + " |")
    md += ["", "False structure without lesions (error energy over the lesion discs / reference energy there):", "",
           "| diameter (mm) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in diameters:
        if (d, "network") in halluc:
            md.append(f"| {d:g} | " + " | ".join(f"{np.mean(halluc[(d, m)]):.4f}" for m in methods) + " |")
            for m in methods:
                rows.append([d, "none", m, len(halluc[(d, m)]), "", "", "", ""])
                rows[-1][4] = float(np.mean(halluc[(d, m)]))
    os.makedirs(args.output_dir, exist_ok=True)
    text = "\n".join(md) + "\n"
    write_text_atomic(os.path.join(args.output_dir, f"lesions_{acc}.md"), text)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(os.path.join(args.output_dir, f"lesions_{acc}.csv"), buf.getvalue())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
