"""The measured-CT report: the HTC2022 score (MCC) by hand, the view subsets, and (slow) the
whole `scripts/compare.py --ct-real` on the shared HTC2022 scans with short solves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SHARED, run_env

from bundle.reporting.ct_real import SETTINGS, mcc, score, subset

HTC = SHARED / "ct_real" / "htc2022_train"


def test_mcc_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1], bool)
    # tp 2, tn 2, fp 1, fn 1: (4 - 1) / sqrt(3 * 3 * 3 * 3) = 1/3
    assert abs(mcc(a, b) - 1 / 3) < 1e-12
    assert mcc(a, a) == 1.0 and abs(mcc(a, ~a) + 1.0) < 1e-12


def test_score_of_a_thresholded_disc():
    c = np.arange(64) - 31.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    disc = ((xx**2 + yy**2) < 20**2).astype(np.float64)
    noisy = disc + np.random.default_rng(0).normal(0, 0.05, disc.shape)
    s = score(noisy, disc, disc.astype(np.uint8))
    assert s["mcc"] > 0.99 and 25 < s["psnr"] < 27  # 20 log10(1 / 0.05) = 26.0 dB


@pytest.mark.skipif(not HTC.is_dir(), reason="../shared/data/ct_real (HTC2022) is not here")
def test_subsets_of_a_measured_scan():
    from bundle.data.ctraw import read_measured_ct

    scan = read_measured_ct(str(HTC / "htc2022_solid_disc_full.mat"))
    views = [subset(scan, s).sinogram.shape[1] for s in SETTINGS]
    assert views == [60, 30, 181]


@pytest.mark.slow
@pytest.mark.skipif(not HTC.is_dir(), reason="../shared/data/ct_real (HTC2022) is not here")
def test_compare_ct_real_runs(tmp_path):
    cmd = [sys.executable, "scripts/compare.py", "--ct-real", "--ct-train", str(HTC / "htc2022_ta_full.mat"),
           "--ct-test", str(HTC / "htc2022_td_full.mat"), "--tv-weights", "0.0003", "--tv-iterations", "5",
           "--dc-weights", "0.01", "--output-dir", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "ct_real.md").read_text()
    assert table.count("htc2022_td_full.mat") == 12 and "network+dc" in table
    assert len(list(tmp_path.glob("*.png"))) == 3
