"""The evaluation tables and files: mean and sample std, the markdown table's format, and the
per-case CSV and summary JSON written by `evaluate_settings` (with a stand-in evaluator)."""

from __future__ import annotations

import csv
import json
import statistics
from functools import partial
from types import SimpleNamespace

import pytest

from bundle.evaluation import evaluate_settings, markdown_table, mean_std


def test_mean_std_against_the_statistics_module():
    values = [0.81, 0.79, 0.86, 0.9]
    s = mean_std(values)
    assert s["mean"] == pytest.approx(statistics.mean(values)) and s["n"] == 4
    assert s["std"] == pytest.approx(statistics.stdev(values))  # sample std, n - 1
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        mean_std([])


def test_markdown_table_format_by_hand():
    summary = {"4": {"network": {"ssim": {"mean": 0.81556, "std": 0.01049}, "psnr": {"mean": 30.954, "std": 1.1}},
                     "zero_filled": {"ssim": {"mean": 0.631, "std": 0.0025}, "psnr": {"mean": 27.97, "std": 0.73}}}}
    assert markdown_table(summary) == (
        "| acceleration | method | SSIM | PSNR (dB) |\n"
        "|---|---|---|---|\n"
        "| 4x | network | 0.8156 ± 0.0105 | 30.95 ± 1.10 |\n"
        "| 4x | zero_filled | 0.6310 ± 0.0025 | 27.97 ± 0.73 |\n"
    )


class FakeEvaluator:
    """Stands in for MONAI's evaluator: `run()` fills `state.metric_details` from the setting."""

    def __init__(self) -> None:
        self.scale = 1.0
        self.state = SimpleNamespace(metric_details=None)

    def set_scale(self, scale: float) -> None:
        self.scale = scale

    def run(self) -> None:
        per_case = {"/d/a.nii.gz": 0.8, "/d/b.nii.gz": 0.6}
        self.state.metric_details = {
            f"{p}_{m}": {c: v * self.scale * (1 if p == "val" else 0.5) for c, v in per_case.items()}
            for p in ("val", "zf") for m in ("ssim", "psnr")
        }


def test_evaluate_settings_writes_csv_json_and_table(tmp_path):
    ev = FakeEvaluator()
    settings = [("4", partial(ev.set_scale, 1.0)), ("8", partial(ev.set_scale, 0.5))]
    summary = evaluate_settings(ev, settings, str(tmp_path))
    assert summary["4"]["network"]["ssim"]["mean"] == pytest.approx(0.7)
    assert summary["8"]["zero_filled"]["psnr"]["mean"] == pytest.approx(0.175)
    assert summary["8"]["network"]["ssim"]["std"] == pytest.approx(statistics.stdev([0.4, 0.3]))
    rows = list(csv.reader((tmp_path / "per_case.csv").open()))
    assert rows[0] == ["case", "acceleration", "method", "ssim", "psnr"]
    assert rows[1][:3] == ["a.nii.gz", "4", "network"] and float(rows[1][3]) == pytest.approx(0.8)
    assert len(rows) == 1 + 2 * 2 * 2  # cases x methods x settings
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    assert (tmp_path / "metrics.md").read_text() == markdown_table(summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "metrics.md", "per_case.csv"]
