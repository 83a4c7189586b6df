"""Compare reconstruction methods on the same cases: zero-filled, compressed sensing (L1-wavelet,
FISTA; its weight tuned on the validation split), and the network with and without data
consistency. Writes a table (markdown and CSV: mean ± std and 95% CI of SSIM / PSNR / NMSE / VIF,
seconds per slice), per-case metrics, and PNG panels (reference | methods, error maps on a shared
scale, sampling mask).

    python scripts/compare.py --acceleration 4                    # the demo test subjects
    python scripts/compare.py --dataset-dir D --datalist D/list.json --acceleration 8 --output-dir eval/cmp8
    python scripts/compare.py --multicoil --acceleration 4   # multi-coil: real and simulated coils
    python scripts/compare.py --ct-real                      # measured fan-beam CT (HTC2022): FBP, TV, network
    python scripts/compare.py --pet                          # low-count PET: post-filtered OSEM, network

Multi-coil (--multicoil): the network (models/model_multicoil.pt) against zero-filled RSS,
CG-SENSE and L1-wavelet PICS (SigPy) with ESPIRiT maps, on real fully sampled raw files
(--real-test; default the in-vivo brain of ../shared/data/kspace/multicoil when present) and on
the demo test subjects with simulated coils. Weights are tuned on --real-validation (default: the
phantoms there, or the committed demo phantom) for the real table, and on the demo validation
subject for the simulated one. Metrics: scikit-image SSIM / PSNR on the whole image, data range
the maximum of the fully sampled RSS.

Nothing is tuned on the test split: the CS weight is chosen by mean SSIM on the `validation` list
(or given with --cs-lambda).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bundle.reporting.comparison import (  # noqa: E402
    add_report_arguments,
    compare_volumes,
    cs_method,
    network_method,
    report_config,
    run_report,
    summary_table,
    tune_cs,
    volume_slices,
    zero_filled_method,
)
from bundle.data import load_datalist  # noqa: E402
from bundle.errors import InputError  # noqa: E402
from bundle.reporting.figures import comparison_panel  # noqa: E402
from bundle.data.io import write_text_atomic  # noqa: E402
from bundle.networks import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_report_arguments(ap, ROOT)
    ap.add_argument("--ckpt-no-dc", default=os.path.join(ROOT, "models", "model_no_dc.pt"),
                    help="weights of the network trained without data consistency (if the file exists)")
    ap.add_argument("--cs-lambda", type=float, help="skip tuning and use this weight")
    ap.add_argument("--cs-lambdas", default="0.0001,0.0003,0.001,0.003", help="grid tuned on the validation list")
    ap.add_argument("--figure-slices", type=int, default=2, help="panels for this many slices of each volume")
    ap.add_argument("--figure-methods", default="zero_filled,cs,network", help="methods in the panels")
    ap.add_argument("--multicoil", action="store_true", help="compare the multi-coil network and baselines")
    ap.add_argument("--real-test", nargs="*", help="fully sampled multi-coil raw files to test on")
    ap.add_argument("--real-validation", nargs="*", help="fully sampled multi-coil raw files to tune the baselines on")
    ap.add_argument("--espirit-calibration", default="window",
                    help="the multi-coil baselines' ESPIRiT calibration region: 'window' (the whole fully sampled "
                         "region; the default since 0.21, the stronger PICS on validation) or 'square' (SigPy's "
                         "centred square, the baselines' maps before 0.21 and the network's) or 'window24' (the window's "
                         "centre 24 x 24, BART ecalib's default size)")
    ap.add_argument("--sense-weights", default="0,0.001,0.01,0.1", help="CG-SENSE grid tuned on validation")
    ap.add_argument("--pics-weights", default="0.0003,0.001,0.003,0.01,0.03", help="PICS grid tuned on validation")
    ap.add_argument("--ct-real", action="store_true",
                    help="measured fan-beam CT (HTC2022): the network against FBP and TV at 60 / 30 views and 90 degrees")
    ap.add_argument("--ct-train", nargs="*", help="measured scans with references to tune the TV and DC weights on")
    ap.add_argument("--ct-test", nargs="*", help="measured scans with references to report on")
    ap.add_argument("--ct-ckpt", default=os.path.join(ROOT, "models", "model_ct_real.pt"))
    ap.add_argument("--tv-weights", default="0.0001,0.0003,0.001,0.003", help="TV grid (1/mm) tuned on --ct-train")
    ap.add_argument("--tv-iterations", type=int, default=300)
    ap.add_argument("--dc-weights", default="0.0001,0.001,0.01,0.1", help="DC grid tuned on --ct-train at 60 views")
    ap.add_argument("--pet", action="store_true", help="low-count PET: the network on OSEM against post-filtered OSEM")
    ap.add_argument("--pet-ckpt", default=os.path.join(ROOT, "models", "model_pet.pt"))
    ap.add_argument("--pet-mr-ckpt", default=os.path.join(ROOT, "models", "model_pet_mr.pt"),
                    help="the MR-guided PET model, scored beside when the file exists ('none': not scored)")
    ap.add_argument("--pet-fractions", default="0.25,0.1,0.05", help="count levels, fractions of the full count")
    ap.add_argument("--pet-bowsher-fractions", default="0.1",
                    help="count levels at which the Bowsher MAP-EM baseline (T1 prior) is scored beside the MR-guided "
                         "model ('none': not scored; 16 minutes for all three levels, 7 for 10 %% only, on 2 CPU cores)")
    ap.add_argument("--pet-realisations", type=int, default=4, help="noise realisations for the lesion statistics")
    ap.add_argument("--pet-max-iterations", type=int, default=10, help="OSEM iterations of the curves and the tuning")
    args = ap.parse_args(argv)
    if args.pet:
        from bundle.reporting.pet import run_pet

        if args.output_dir == os.path.join(ROOT, "eval", "compare"):
            args.output_dir = os.path.join(ROOT, "eval", "compare_pet")
        return run_report(lambda a: run_pet(a, ROOT), args)
    if args.ct_real:
        from bundle.reporting.ct_real import run_ct_real

        if args.output_dir == os.path.join(ROOT, "eval", "compare"):
            args.output_dir = os.path.join(ROOT, "eval", "compare_ct_real")
        return run_report(lambda a: run_ct_real(a, ROOT), args)
    if args.multicoil:
        from bundle.reporting.multicoil_compare import run_multicoil

        return run_report(lambda a: run_multicoil(a, ROOT), args)
    return run_report(run, args)


def run(args) -> int:
    parser, test_items = report_config(args.config, ROOT, args.acceleration, args.mask_type, args.dataset_dir,
                                       args.datalist, args.split, args.overrides)
    dataset_dir, datalist = parser.get_parsed_content("dataset_dir"), parser.get_parsed_content("datalist")

    lam, tuning = args.cs_lambda, None
    if lam is None:
        lambdas = [float(x) for x in args.cs_lambdas.split(",")]
        lam, tuning = tune_cs(parser, load_datalist(datalist, dataset_dir, "validation"), lambdas, args.cs_iterations)
    network = load_checkpoint(parser.get_parsed_content("network_def"), args.ckpt)
    methods = {
        "zero_filled": zero_filled_method(),
        "cs": cs_method(lam, args.cs_iterations),
        "network": network_method(network, data_consistency=True),
    }
    if os.path.isfile(args.ckpt_no_dc):  # a network trained without data consistency (--data_consistency false)
        no_dc = load_checkpoint(parser.get_parsed_content("network_def"), args.ckpt_no_dc)
        methods["network_no_dc"] = network_method(no_dc, data_consistency=False)
    else:  # the same weights with the step switched off: shows how much the model relies on it
        methods["network_dc_off"] = network_method(network, data_consistency=False)

    unknown = set(args.figure_methods.split(",")) - set(methods)
    if unknown:
        raise InputError(f"unknown --figure-methods {', '.join(sorted(unknown))}: expected some of {', '.join(methods)}")

    def keep(name: str, index: int, n: int) -> bool:  # evenly spread slices around the middle
        return index in {n * (k + 1) // (args.figure_slices + 1) for k in range(args.figure_slices)}

    per_volume, seconds, kept = compare_volumes(volume_slices(parser, test_items, "comparing"), methods, keep=keep)

    acc = f"{args.acceleration:g}x"
    out = args.output_dir
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    table, rows = summary_table(per_volume, seconds)
    header = (f"Acceleration {acc}, {args.mask_type} masks, {len(test_items)} volumes of the "
              f"'{args.split}' list; CS lambda {lam:g} ({'tuned on validation' if tuning else 'given'}, "
              f"{args.cs_iterations} FISTA iterations). Mean ± std [95% CI] over volumes.\n\n")
    write_text_atomic(os.path.join(out, f"compare_{acc}.md"), header + table)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(os.path.join(out, f"compare_{acc}.csv"), buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "method", "ssim", "psnr", "nmse", "vif"])
    for method, vols in per_volume.items():
        for case, v in vols.items():
            w.writerow([case, method, v["ssim"], v["psnr"], v["nmse"], v["vif"]])
    write_text_atomic(os.path.join(out, f"per_case_{acc}.csv"), buf.getvalue())
    if tuning:
        write_text_atomic(os.path.join(out, f"cs_tuning_{acc}.json"),
                          json.dumps({"chosen": lam, "validation_ssim": tuning}, indent=2) + "\n")
    for (name, index), images in kept.items():
        stem = name.replace(".nii.gz", "").replace(".nii", "")
        text = {m: f"SSIM {per_volume[m][name]['ssim']:.3f} (volume)" for m in methods}
        comparison_panel(images, args.figure_methods.split(","), os.path.join(out, "figures", f"compare_{acc}_{stem}_slice{index}.png"),
                         title=f"{stem}, slice {index}, {acc} {args.mask_type}", metrics=text)
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
