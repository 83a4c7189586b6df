"""The comparison report end to end on tiny data, and its statistics."""

import csv
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_env
from scipy import stats

from bundle.reporting.comparison import summarize


def test_summarize_against_scipy():
    values = [0.71, 0.75, 0.69, 0.80]
    s = summarize(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=s["mean"], scale=stats.sem(values))
    assert s["ci_low"] == pytest.approx(lo) and s["ci_high"] == pytest.approx(hi)
    assert s["std"] == pytest.approx(torch.tensor(values).std().item())
    with pytest.raises(ValueError):
        summarize([])


@pytest.fixture
def ckpt(tmp_path):
    from bundle.networks import ResidualUNet

    path = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save(ResidualUNet(features=(4, 4, 8, 8, 16, 4)).state_dict(), path)
    return path


def test_compare_script_writes_table_and_figures(tiny_dataset, tmp_path, ckpt):
    out = tmp_path / "report"
    cmd = [sys.executable, "scripts/compare.py", "--dataset-dir", tiny_dataset["dataset_dir"],
           "--datalist", tiny_dataset["datalist"], "--ckpt", str(ckpt), "--output-dir", str(out),
           "--ckpt-no-dc", str(tmp_path / "absent.pt"), "--cs-lambdas", "0.001,0.01", "--cs-iterations", "5", "--figure-slices", "1", "features=[4,4,8,8,16,4]"]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (out / "compare_4x.md").read_text()
    for method in ("zero_filled", "cs", "network", "network_dc_off"):
        assert f"| {method} |" in table
    rows = list(csv.reader(open(out / "compare_4x.csv")))
    assert rows[0] == ["method", "metric", "mean", "std", "ci95_low", "ci95_high", "n"]
    assert {r[1] for r in rows[1:]} == {"ssim", "psnr", "nmse", "vif", "seconds_per_slice"}
    assert (out / "cs_tuning_4x.json").is_file() and (out / "per_case_4x.csv").is_file()
    pngs = list((out / "figures").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_compare_script_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "scripts/compare.py", "--dataset-dir", str(tmp_path / "nope"),
                          "--datalist", str(tmp_path / "x.json")], cwd=ROOT, env=run_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip() == f"error: dataset_dir {tmp_path / 'nope'}: no such directory"


@pytest.mark.slow
def test_lesion_study_script(tiny_dataset, tmp_path, ckpt):
    out = tmp_path / "report"
    cmd = [sys.executable, "scripts/studies/lesion_study.py", "--dataset-dir", tiny_dataset["dataset_dir"],
           "--datalist", tiny_dataset["datalist"], "--ckpt", str(ckpt), "--output-dir", str(out),
           "--cs-iterations", "3", "--diameters-mm", "4", "--contrasts=-0.2,0.2", "--slices-per-volume", "2",
           "--lesions-per-slice", "2", "features=[4,4,8,8,16,4]"]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (out / "lesions_4x.md").read_text()
    assert "| 4 | -20% |" in text and "| 4 | +20% |" in text and "False structure" in text
    rows = list(csv.DictReader(open(out / "lesions_4x.csv")))
    zf = [r for r in rows if r["method"] == "zero_filled" and r["contrast"] != "none"]
    # zero-filled is linear in the image: the lesion's contrast passes through it exactly (up to aliasing
    # of the lesion itself, which spreads a fraction of it outside the disc)
    assert all(0.3 < float(r["recovered_mean"]) <= 1.05 for r in zf)


@pytest.mark.slow
def test_pet_lesion_weight_study_never_ships_the_same_weights(tmp_path):
    """The PET study's rule on the validation phantom: a candidate identical to the shipped
    weights (a copy) has a gap gain of exactly 0, so it does not ship (the rule asks for >= 0.03)."""
    import shutil

    copy = tmp_path / "candidate.pt"
    shutil.copy(ROOT / "models" / "model_pet.pt", copy)
    res = subprocess.run([sys.executable, "scripts/studies/pet_lesion_weight.py", "models/model_pet.pt",
                          str(copy), "--fractions", "0.1", "--realisations", "2", "--hot-threshold", "0.03"],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "hot gap +0.000, cold gap +0.000, PSNR +0.00 dB, SSIM +0.0000: does not ship" in res.stdout
    assert "| models/model_pet.pt | 10 % |" in res.stdout and f"| {copy} | 10 % |" in res.stdout


def test_pet_compare_refuses_a_bad_bowsher_level_in_one_line(tmp_path):
    """compare --pet with an MR-guided model checks --pet-bowsher-fractions before it writes."""
    from bundle.networks import ResidualUNet, with_metadata

    net = ResidualUNet(features=(16, 16, 32, 64, 128, 16), norm="batch", data_consistency=False, guide_channels=1)
    torch.save(with_metadata(net.state_dict(), {"modality": "pet", "architecture": net.architecture()}),
               tmp_path / "mr.pt")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "scripts/compare.py", "--pet", "--pet-mr-ckpt", str(tmp_path / "mr.pt"),
                          "--pet-bowsher-fractions", "ten", "--output-dir", str(out)],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert res.stderr.strip() == "error: --pet-bowsher-fractions ten: count levels separated by commas, or none"
    assert not out.exists()


def test_pet_reports_load_mr_guided_weights_from_any_path(tmp_path):
    """compare --pet and the studies build inference_pet.yaml's reconstructor on the weights they
    are given: MR-guided weights outside models/ (none ship there) and the PET-only ones."""
    from bundle.networks import ResidualUNet, with_metadata
    from bundle.reporting.pet import pet_reconstructor

    torch.manual_seed(0)
    net = ResidualUNet(features=(16, 16, 32, 64, 128, 16), norm="batch", data_consistency=False, guide_channels=1)
    torch.save(with_metadata(net.state_dict(), {"modality": "pet", "architecture": net.architecture()}),
               tmp_path / "mr.pt")
    rec = pet_reconstructor(str(ROOT), str(tmp_path / "mr.pt"))
    assert rec.guided
    torch.testing.assert_close(rec.network.state_dict()["unets.0.conv_0.conv_0.conv.weight"],
                               net.state_dict()["unets.0.conv_0.conv_0.conv.weight"])
    assert not pet_reconstructor(str(ROOT), str(ROOT / "models" / "model_pet.pt")).guided


def test_compare_help_prints():
    # argparse formats every help string with %: a bare "%" in one breaks --help for all
    res = subprocess.run([sys.executable, "scripts/compare.py", "--help"], cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--pet-bowsher-fractions" in res.stdout, res.stderr[-2000:]
