"""Evaluation at several accelerations: network and zero-filled side by side, written as
`metrics.json`, `metrics.md` and `per_case.csv`."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence

from monai.engines import SupervisedEvaluator

from bundle.comparison import summarize
from bundle.io import write_text_atomic
from bundle.transforms import UndersampleKspaced

logger = logging.getLogger(__name__)

METHODS = {"network": "val", "zero_filled": "zf"}
REPORTED = ("ssim", "psnr", "nmse", "vif", "ssim_fastmri")  # those present in the evaluator's metrics
LABELS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "nmse": "NMSE", "vif": "VIF", "ssim_fastmri": "SSIM (fastMRI)"}


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std and count of `values` (the summary of `bundle.comparison.summarize`)."""
    s = summarize(values)
    return {"mean": s["mean"], "std": s["std"], "n": s["n"]}


def markdown_table(summary: Mapping) -> str:
    first = next(iter(next(iter(summary.values())).values()))
    names = [m for m in REPORTED if m in first]
    lines = [
        "| acceleration | method | " + " | ".join(LABELS[m] for m in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for acc, methods in summary.items():
        for method, metrics in methods.items():
            cells = []
            for m in names:
                s = metrics[m]
                fmt = "{:.4f}" if m != "psnr" else "{:.2f}"
                cells.append(f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}")
            lines.append(f"| {acc}x | {method} | " + " | ".join(cells) + " |")
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
    rows, summary, names = [], {}, ["ssim"]
    for acc in accelerations:
        undersample.set_accelerations([acc])
        evaluator.run()
        details = evaluator.state.metric_details or {}
        key = f"{acc:g}"
        summary[key] = {}
        names = [m for m in REPORTED if all(f"{p}_{m}" in details for p in METHODS.values())]
        for method, prefix in METHODS.items():
            per_metric = {m: details[f"{prefix}_{m}"] for m in names}
            summary[key][method] = {m: mean_std(list(v.values())) for m, v in per_metric.items()}
            for case in per_metric["ssim"]:
                rows.append([os.path.basename(case), key, method] + [per_metric[m][case] for m in names])
    os.makedirs(output_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "acceleration", "method", *names])
    writer.writerows(rows)
    write_text_atomic(os.path.join(output_dir, "per_case.csv"), buf.getvalue())
    write_text_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary)
    write_text_atomic(os.path.join(output_dir, "metrics.md"), table)
    logger.info("evaluation (mean ± std over volumes):\n%s", table)
    print(table)
    return summary
