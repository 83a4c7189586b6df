"""`scripts/compare.py --multicoil`: the multi-coil network against the classical baselines on
real and simulated coils (bundle.reporting.multicoil holds the pieces)."""

from __future__ import annotations

import csv
import io
import json
import os

from bundle.data import load_datalist
from bundle.data.io import write_text_atomic
from bundle.errors import InputError
from bundle.options import check_options
from bundle.parallel_imaging import (
    ESPIRIT_CALIBRATION,
    NETWORK_PICS_MU,
    PICS_BLEND_BY_ACCELERATION,
    PICS_MODE_BY_ACCELERATION,
    PICS_REGION,
    SOLVERS,
    by_acceleration,
)
from bundle.reporting.comparison import parse_weights, shared_files
from bundle.reporting.multicoil import (
    Case,
    MapsCache,
    baseline_method,
    evaluate,
    real_cases,
    simulated_cases,
    table,
    tune,
    varnet_method,
)

SHARED_MULTICOIL = os.path.join("..", "shared", "data", "kspace", "multicoil")
# the in-vivo brain (and its body-coil scan) is test only: never trained on, never used to select
REAL_TEST = ("pulseq_brain_16ch.h5", "pulseq_brain_bodycoil_2ch.h5")
REAL_VALIDATION = ("pulseq_phantom_16ch.h5", "pulseq_phantom_32ch_64.h5", "pulseq_phantom_bodycoil_2ch.h5",
                   "pulseq_bottle_phantom_4ch_sol13.h5", "pulseq_bottle_phantom_4ch_sol15.h5",
                   "pulseq_bottle_phantom_4ch_sol22.h5")


def _hybrid_words(acceleration: float) -> str:
    """What the shipped inference does with PICS at a (nominal = effective, fastMRI masks) acceleration."""
    iterations = SOLVERS["shipped"][0]
    if by_acceleration(acceleration, PICS_MODE_BY_ACCELERATION) == "joint":
        return (f"that PICS with varnet's image as a second prior (mu {NETWORK_PICS_MU:g}; {iterations} iterations) "
                f"on the {PICS_REGION}, varnet elsewhere")
    return (f"(1 - a) x varnet + a x that PICS ({iterations} iterations) on the {PICS_REGION}, "
            f"a = {by_acceleration(acceleration, PICS_BLEND_BY_ACCELERATION):g}")


def _defaults(root: str, names: tuple[str, ...], fallback: list[str]) -> list[str]:
    return shared_files(root, SHARED_MULTICOIL, names) or fallback


def run_multicoil(args, root: str) -> int:
    from monai.bundle import ConfigParser

    from bundle.networks import load_checkpoint
    from bundle.varnet import VarNet

    # the baselines' maps: ESPIRiT calibrated on SigPy's square, on the whole region (shipped since
    # 0.23; compare.py's default since 0.21) or on its centre 24 x 24 (`espirit_maps(calibration=...)`)
    calibration = getattr(args, "espirit_calibration", None) or ESPIRIT_CALIBRATION
    check_options(espirit_calibration=calibration)
    maps = f"espirit-{calibration}"
    demo_phantom = os.path.join(root, "bundle", "demo_data", "multicoil", "pulseq_phantom_32ch_64.h5")
    test_files = args.real_test if args.real_test is not None else _defaults(root, REAL_TEST, [])
    val_files = args.real_validation if args.real_validation is not None else _defaults(root, REAL_VALIDATION, [demo_phantom])
    overlap = {os.path.basename(p) for p in test_files} & {os.path.basename(p) for p in val_files}
    if overlap:
        raise InputError(f"--real-test and --real-validation share {', '.join(sorted(overlap))}")
    sense_w, pics_w = parse_weights(args.sense_weights, "--sense-weights"), parse_weights(args.pics_weights, "--pics-weights")
    acc = float(args.acceleration)
    ckpt = args.ckpt if os.path.basename(args.ckpt) != "model.pt" else os.path.join(root, "models", "model_multicoil.pt")

    parser = ConfigParser()
    parser.read_config([os.path.join(root, "configs", "train.yaml"), os.path.join(root, "configs", "train_multicoil.yaml")])
    parser["bundle_root"] = root
    for item in args.overrides:
        key, _, value = item.partition("=")
        parser[key] = value
    dataset_dir = args.dataset_dir or parser.get_parsed_content("dataset_dir")
    datalist = args.datalist or parser.get_parsed_content("datalist")
    from bundle.data.demo import ensure_datalist

    ensure_datalist(datalist, dataset_dir)
    sim_test = simulated_cases(parser, load_datalist(datalist, dataset_dir, args.split))
    sim_val = simulated_cases(parser, load_datalist(datalist, dataset_dir, "validation"))
    real_test, real_val = real_cases(test_files), real_cases(val_files)

    cache = MapsCache()
    tuning: dict = {}
    chosen: dict[str, dict[str, float]] = {}
    for kind, val in (("real", real_val), ("simulated", sim_val)):
        if not val:
            continue
        chosen[kind] = {}
        for method, grid in (("cg_sense", sense_w), ("pics", pics_w)):
            w, scores = tune(val, method, grid, acc, maps=maps, cache=cache)
            chosen[kind][method] = w
            tuning[f"{kind}/{method}"] = {"chosen": w, "validation_ssim": scores,
                                          "validation_cases": [c.name for c in val]}

    network = load_checkpoint(parser.get_parsed_content("network_def"), ckpt)
    if not isinstance(network, VarNet):
        raise InputError(f"{ckpt}: network_def is not the multi-coil network (bundle.varnet.VarNet)")
    out = args.output_dir
    acc_name = f"{acc:g}x"
    sections, rows = [], [["case", "coils", "method", "ssim", "psnr"]]
    for kind, cases in (("real", real_test), ("simulated", sim_test)):
        if not cases or kind not in chosen:
            continue
        methods = {
            "zero_filled": baseline_method("zero_filled", 0.0),
            "cg_sense": baseline_method("cg_sense", chosen[kind]["cg_sense"], maps, cache),
            "pics": baseline_method("pics", chosen[kind]["pics"], maps, cache),
            "varnet": varnet_method(network),  # own maps cache: ESPIRiT's time counts in the network's
            # what configs/inference.yaml ships: the network joined with this table's PICS on the
            # object up to 5.66x, averaged with it above (its own ESPIRiT and PICS time included)
            "hybrid": varnet_method(network, pics_blend=None, pics_weight=chosen[kind]["pics"]),
        }
        per_case, seconds, _ = evaluate(cases, methods, acc, desc=f"{kind} test cases")
        names = [c.name for c in cases]
        coils = {c.name: c.slices[0].shape[0] for c in cases}
        header = (f"### {kind} coils, {acc_name} equispaced (fastMRI centre {0.32 / acc:.2f}), {len(cases)} cases "
                  f"({', '.join(f'{n} ({coils[n]} coils)' for n in names)}); weights tuned on "
                  f"{', '.join(tuning[f'{kind}/pics']['validation_cases'])}: CG-SENSE {chosen[kind]['cg_sense']:g}, "
                  f"PICS {chosen[kind]['pics']:g} (ESPIRiT calibrated on the {calibration}); hybrid = {_hybrid_words(acc)} (the shipped inference)\n\n")
        sections.append(header + table(per_case, seconds, names))
        for method, cs in per_case.items():
            for case, v in cs.items():
                rows.append([case, coils[case], method, v["ssim"], v["psnr"]])
    if not sections:
        raise InputError("no test cases: give --real-test files or a datalist with a test split")
    text = (f"Multi-coil comparison at {acc_name}: scikit-image SSIM / PSNR on the whole image, data range = "
            "the maximum of the fully sampled RSS; mean over cases.\n\n" + "\n".join(sections))
    os.makedirs(out, exist_ok=True)
    write_text_atomic(os.path.join(out, f"compare_multicoil_{acc_name}.md"), text)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(os.path.join(out, f"per_case_multicoil_{acc_name}.csv"), buf.getvalue())
    write_text_atomic(os.path.join(out, f"tuning_multicoil_{acc_name}.json"), json.dumps(tuning, indent=2) + "\n")
    print(text)
    return 0


__all__ = ("Case", "run_multicoil")
