"""Evaluation at several acquisition settings (MRI accelerations, CT view counts, radiograph doses,
PET count levels): the network and the classical baseline (zero-filled, FBP, OSEM) side by side, written as `metrics.json`,
`metrics.md` and `per_case.csv`."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from types import MappingProxyType

from monai.engines import SupervisedEvaluator

from bundle.data.io import write_text_atomic
from bundle.transforms.mri import UndersampleKspaced

logger = logging.getLogger(__name__)

METHODS = MappingProxyType({"network": "val", "zero_filled": "zf"})
CT_METHODS = MappingProxyType({"fbp": "fbp", "network": "val"})
CT_DC_METHODS = MappingProxyType({"network_dc": "val"})  # the same network output after data consistency with the scan
XRAY_METHODS = MappingProxyType({"network": "val", "low_dose": "noisy"})
# PET's evaluation: the post-filtered OSEM tuned on validation for the count level (the baseline a
# physicist runs; `PETScanBatch(baseline=True)`), the network's unfiltered OSEM input, the network
PET_METHODS = MappingProxyType({"osem": "osemtuned", "osem_input": "osem", "network": "val"})
REPORTED = ("ssim", "psnr", "nmse", "vif", "ssim_fastmri")  # those present in the evaluator's metrics
LABELS = MappingProxyType({"ssim": "SSIM", "psnr": "PSNR (dB)", "nmse": "NMSE", "vif": "VIF", "ssim_fastmri": "SSIM (fastMRI)"})


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of `values`."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def markdown_table(summary: Mapping, setting: str = "acceleration", suffix: str = "x") -> str:
    first = next(iter(next(iter(summary.values())).values()))
    names = [m for m in REPORTED if m in first]
    lines = [
        f"| {setting} | method | " + " | ".join(LABELS[m] for m in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for acc, methods in summary.items():
        for method, metrics in methods.items():
            cells = []
            for m in names:
                s = metrics[m]
                fmt = "{:.4f}" if m != "psnr" else "{:.2f}"
                cells.append(f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}")
            lines.append(f"| {acc}{suffix} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_accelerations(
    evaluator: SupervisedEvaluator,
    undersample: UndersampleKspaced,
    accelerations: Sequence[float],
    output_dir: str,
) -> dict:
    """Run `evaluator` once per acceleration (changing `undersample`, the deterministic mask
    transform of its data) and write the per-volume and summary metrics to `output_dir`.

    Returns:
        {"<acc>": {"network"|"zero_filled": {"ssim"|"psnr"|"nmse": {"mean", "std", "n"}}}}
    """
    settings = [(f"{float(a):g}", partial(undersample.set_accelerations, [a])) for a in accelerations]
    return evaluate_settings(evaluator, settings, output_dir, METHODS, "acceleration", "x")


def evaluate_views(
    evaluator: SupervisedEvaluator, dataset, acquisition, views: Sequence[int], output_dir: str, consistency=None
) -> dict:
    """CT: run `evaluator` once per number of views; the scans of `dataset` (a `SliceDataset` whose
    cache transform simulates with `acquisition`) are simulated again for each. Network vs FBP.

    With `consistency` (the `CTDataConsistency` of the evaluator's inferer), each scan is also
    evaluated with it: rows "network" (its iterations set to 0) and "network_dc" (as configured)."""
    iterations = consistency.iterations if consistency is not None else 0

    def dc(n: int) -> None:
        if consistency is not None:
            consistency.set(consistency.weight, n)

    def apply(v: int) -> None:
        dc(0)
        acquisition.set_views(v)
        dataset.recache(dataset.cache_transform)

    settings: list[tuple] = []
    for v in views:
        settings.append((f"{int(v)}", partial(apply, v), CT_METHODS))
        if iterations > 0:  # the same cached scans, now with data consistency
            settings.append((f"{int(v)}", partial(dc, iterations), CT_DC_METHODS))
    try:
        return evaluate_settings(evaluator, settings, output_dir, CT_METHODS, "views", " views")
    finally:
        dc(iterations)


def evaluate_doses(evaluator: SupervisedEvaluator, noise, doses: Sequence[float], output_dir: str) -> dict:
    """Radiographs: run `evaluator` once per dose (photons per pixel at signal 1), changing
    `noise` (the deterministic `LowDoseRadiographd` of its data). Network vs the low-dose image."""
    settings = [(f"{float(i0):g}", partial(noise.set_dose, i0)) for i0 in doses]
    return evaluate_settings(evaluator, settings, output_dir, XRAY_METHODS, "photons per pixel", "")


def evaluate_counts(evaluator: SupervisedEvaluator, dataset, fractions: Sequence[float], output_dir: str) -> dict:
    """PET: run `evaluator` once per count fraction, changing the fraction of `dataset` (a
    `PETPhantomSlices` with fixed noise seeds). The network beside the tuned post-filtered OSEM
    and its own OSEM input (`PET_METHODS`)."""
    from bundle.physics.pet import check_count_fraction

    def apply(f: float) -> None:
        dataset.fractions = [check_count_fraction(f)]

    settings = [(f"{float(f):g}", partial(apply, f)) for f in fractions]
    return evaluate_settings(evaluator, settings, output_dir, PET_METHODS, "count fraction", "")


def evaluate_settings(
    evaluator: SupervisedEvaluator,
    settings: Sequence[tuple],
    output_dir: str,
    methods: Mapping[str, str] = METHODS,
    setting_name: str = "acceleration",
    suffix: str = "x",
) -> dict:
    """For each (label, apply) in `settings`: apply(), run `evaluator`, collect the per-volume
    metrics of each method (`methods`: name -> metric prefix in the evaluator); then write them.
    A setting may carry its own methods, (label, apply, methods): several runs of one label then
    add rows to it (e.g. CT with and without data consistency)."""
    rows: list[list] = []
    summary: dict[str, dict] = {}
    names = ["ssim"]
    for key, apply, *own in settings:
        run_methods: Mapping[str, str] = own[0] if own else methods
        apply()
        evaluator.run()
        details = evaluator.state.metric_details or {}
        summary.setdefault(key, {})
        names = [m for m in REPORTED if all(f"{p}_{m}" in details for p in run_methods.values())]
        for method, prefix in run_methods.items():
            per_metric = {m: details[f"{prefix}_{m}"] for m in names}
            summary[key][method] = {m: mean_std(list(v.values())) for m, v in per_metric.items()}
            for case in per_metric["ssim"]:
                rows.append([os.path.basename(case), key, method] + [per_metric[m][case] for m in names])
    os.makedirs(output_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", setting_name, "method", *names])
    writer.writerows(rows)
    write_text_atomic(os.path.join(output_dir, "per_case.csv"), buf.getvalue())
    write_text_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary, setting_name, suffix)
    write_text_atomic(os.path.join(output_dir, "metrics.md"), table)
    logger.info("evaluation (mean ± std over volumes):\n%s", table)
    print(table)
    return summary
