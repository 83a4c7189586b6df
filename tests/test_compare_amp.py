"""scripts/compare_amp.py: the commands it runs, its table and test statistic (checked against
Welch's formula written out here), its argument errors; a real run is marked slow."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_env

sys.path.insert(0, os.path.join(str(ROOT), "scripts"))
import compare_amp  # noqa: E402

# the H100 measurement of docs/README.md (4x SSIM per seed)
AMP = [0.8156, 0.8196, 0.8034]
FP32 = [0.8196, 0.8254, 0.8127]


def metrics(ssim: float, psnr: float) -> dict:
    return {"4": {"network": {"ssim": {"mean": ssim}, "psnr": {"mean": psnr}}}}


def test_table_means_and_welch_t():
    results = {"true": {s: metrics(v, 30.0 + s) for s, v in enumerate(AMP)},
               "false": {s: metrics(v, 31.0 + s) for s, v in enumerate(FP32)}}
    text = compare_amp.table(results, [0, 1, 2])
    # Welch's t by hand: (mean_a - mean_b) / sqrt(var_a / n + var_b / n)
    mean = lambda x: sum(x) / len(x)  # noqa: E731
    var = lambda x: sum((v - mean(x)) ** 2 for v in x) / (len(x) - 1)  # noqa: E731
    t = (mean(AMP) - mean(FP32)) / math.sqrt(var(AMP) / 3 + var(FP32) / 3)
    assert abs(t - (-1.04)) < 0.01  # the card's value
    assert f"t = {t:.2f}" in text and "p = 0.36" in text
    assert f"{mean(AMP):.4f} +- {math.sqrt(var(AMP)):.4f}" in text and f"{mean(FP32):.4f} +- {math.sqrt(var(FP32)):.4f}" in text
    assert "| 4x | AMP - fp32 | | -0.0064" in text and "| -1.00 |" in text  # PSNR: 31 vs 32 on average
    one = compare_amp.table({"true": {0: metrics(0.8, 30)}, "false": {0: metrics(0.7, 29)}}, [0])
    assert "one seed: no test" in one and "+0.1000" in one


def test_commands_train_with_amp_and_evaluate_in_full_precision(tmp_path):
    class Args:
        num_workers, max_epochs = 2, None

    train, evaluate = compare_amp.commands("true", 1, str(tmp_path), Args)
    assert train[train.index("--amp") + 1] == "true" and train[train.index("--seed") + 1] == "1"
    assert "--max_epochs" not in train and "training" in train
    ckpt = train[train.index("--ckpt_dir") + 1]
    assert evaluate[evaluate.index("--ckpt_dir") + 1] == ckpt and evaluate[evaluate.index("--amp") + 1] == "false"
    assert "evaluating" in evaluate and evaluate[evaluate.index("--output_dir") + 1] == str(tmp_path / "eval_true_1")


@pytest.mark.parametrize("argv, message", [(["--seeds", "a,b"], "--seeds"), (["--parallel", "0"], "--parallel")])
def test_bad_arguments(argv, message, capsys):
    assert compare_amp.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_compare_amp_smoke_run(tmp_path):
    res = subprocess.run([sys.executable, "scripts/compare_amp.py", "--seeds", "0", "--max-epochs", "1",
                          "--num-workers", "0", "--out-dir", str(tmp_path)], cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (tmp_path / "amp_comparison.md").read_text()
    assert "| 4x | AMP | " in text and "| 8x | fp32 | " in text
    # on the CPU MONAI's trainer does not autocast: both arms are the same training
    assert "| 4x | AMP - fp32 | | +0.0000" in text or "| 4x | AMP - fp32 | | -0.0000" in text
