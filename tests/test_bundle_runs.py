"""End-to-end runs of the configs through `python -m monai.bundle run`, on tiny phantom data."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import phantom_volume, run_bundle, write_nifti

TINY = ["--features", "[4,4,8,8,16,4]"]
TRAIN = ["--meta_file", "configs/metadata.json", "--config_file", "configs/train.yaml",
         "--logging_file", "configs/logging.conf"]
EVAL = ["--meta_file", "configs/metadata.json", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--logging_file", "configs/logging.conf"]



def data_args(tiny_dataset, tmp_path, **extra):
    args = ["--dataset_dir", tiny_dataset["dataset_dir"], "--datalist", tiny_dataset["datalist"],
            "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
            "--batch_size", "2", "--patch_size", "[48,48]", *TINY]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


def test_train_two_iterations_then_evaluate_and_infer(tiny_dataset, tmp_path):
    res = run_bundle("training", *TRAIN, *data_args(tiny_dataset, tmp_path, max_epochs=1, epoch_length=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert list((tmp_path / "models").glob("last_checkpoint_epoch=1.pt"))
    assert "Epoch: 1/1, Iter: 2/2" in res.stdout + res.stderr

    # default `run` id of the evaluation overlay, both accelerations, network and zero-filled
    res = run_bundle(*EVAL, *data_args(tiny_dataset, tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"4", "8"}
    for acc in metrics.values():
        assert set(acc) == {"network", "zero_filled"}
        for m in ("ssim", "psnr", "nmse", "vif", "ssim_fastmri"):
            assert np.isfinite(acc["network"][m]["mean"]) and acc["zero_filled"][m]["n"] == 1
    # zero-filled at 8x is worse than at 4x on the same case
    assert metrics["8"]["zero_filled"]["ssim"]["mean"] < metrics["4"]["zero_filled"]["ssim"]["mean"]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_case.csv")))
    assert len(rows) == 4 and {r["case"] for r in rows} == {tiny_dataset["names"][4]}

    out = tmp_path / "inferred"
    res = run_bundle("--config_file", "configs/inference.yaml", "--input_dir", tiny_dataset["dataset_dir"],
                     "--output_dir", str(out), "--ckpt_path", str(tmp_path / "models" / "model.pt"),
                     "--acceleration", "8", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in tiny_dataset["names"]:
        stem = name[: -len(".nii.gz")]
        src = nib.load(f"{tiny_dataset['dataset_dir']}/{name}")
        for kind in ("recon", "zero_filled", "mask"):
            img = nib.load(str(out / f"{stem}_{kind}.nii.gz"))
            assert img.shape == src.shape
            np.testing.assert_allclose(img.affine, src.affine)
        mask = nib.load(str(out / f"{stem}_mask.nii.gz")).get_fdata()
        assert mask[:, :, 0].sum(axis=1).tolist() == [6] * 40  # 48 lines at 8x


@pytest.mark.slow
def test_evaluation_is_reproducible(tiny_dataset, tmp_path):
    res = run_bundle("training", *TRAIN, *data_args(tiny_dataset, tmp_path, max_epochs=1, epoch_length=1))
    assert res.returncode == 0, res.stderr[-3000:]
    values = []
    for _ in range(2):
        res = run_bundle(*EVAL, *data_args(tiny_dataset, tmp_path, eval_accelerations="[4]"))
        assert res.returncode == 0, res.stderr[-3000:]
        values.append((tmp_path / "eval" / "per_case.csv").read_text())
    assert values[0] == values[1]


def _bad(tmp_path, tiny_dataset, kind):
    d = tiny_dataset["dataset_dir"]
    extra = {}
    if kind == "missing dataset_dir":
        extra["dataset_dir"] = str(tmp_path / "nowhere")
        return extra, "dataset_dir .*nowhere: no such directory"
    if kind == "acceleration below 1":
        return {"acceleration": 0.5}, "acceleration must be a number >= 1, got 0.5"
    if kind == "unknown mask type":
        return {"mask_type": "spiral"}, "unknown mask_type 'spiral'"
    path = tmp_path / "bad.nii.gz"
    if kind == "empty datalist":
        dl = tmp_path / "empty.json"
        dl.write_text(json.dumps({"training": [], "validation": []}))
        return {"datalist": str(dl)}, "empty.json: the 'training' list is missing or empty"
    if kind == "not NIfTI":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
        message = "notes.txt: cannot be loaded"
    elif kind == "corrupt":
        path.write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")
        message = "bad.nii.gz: cannot be loaded"
    elif kind == "2D volume":
        write_nifti(path, np.ones((16, 16), np.float32))
        message = r"bad.nii.gz: expected a 3D volume, got shape \(16, 16\)"
    elif kind == "4D volume":
        write_nifti(path, np.ones((16, 16, 8, 3), np.float32))
        message = r"bad.nii.gz: expected a 3D volume, got shape \(16, 16, 8, 3\)"
    elif kind == "NaN voxels":
        vol = phantom_volume()
        vol[3, 3, 3] = np.nan
        write_nifti(path, vol)
        message = "bad.nii.gz: contains NaN or infinite voxels"
    dl = tmp_path / "bad.json"
    dl.write_text(json.dumps({"training": [{"image": str(path)}], "validation": [{"image": f"{d}/sub-03.nii.gz"}]}))
    return {"datalist": str(dl)}, message


SLOW = pytest.mark.slow  # each case is a process start (~8 s of imports on 2 cores); the same checks run in-process


@pytest.mark.parametrize("kind", [pytest.param("missing dataset_dir", marks=SLOW), "empty datalist",
                                  pytest.param("not NIfTI", marks=SLOW), "corrupt", pytest.param("2D volume", marks=SLOW),
                                  pytest.param("4D volume", marks=SLOW), pytest.param("NaN voxels", marks=SLOW),
                                  pytest.param("acceleration below 1", marks=SLOW), "unknown mask type"])
def test_bad_input_stops_with_one_line(tiny_dataset, tmp_path, kind):
    import re

    extra, message = _bad(tmp_path, tiny_dataset, kind)
    res = run_bundle("training", *TRAIN, *data_args(tiny_dataset, tmp_path, max_epochs=1, epoch_length=1, **extra))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_inference_bad_input_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", phantom_volume())
    write_nifti(tmp_path / "in" / "b.nii.gz", np.ones((8, 8, 8, 2), np.float32))
    res = run_bundle("--config_file", "configs/inference.yaml", "--input_dir", str(tmp_path / "in"),
                     "--output_dir", str(tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("b.nii.gz: expected a 3D volume, got shape (8, 8, 8, 2): 4D volumes "
                                                        "(several frames) are not supported; give one 3D volume per frame")
    assert not (tmp_path / "out").exists()


def test_shipped_model_beats_zero_filled_on_held_out_demo_subjects(tmp_path):
    """The shipped weights, evaluated by the evaluation config on the demo test subjects at 4x."""
    res = run_bundle(*EVAL, "--output_dir", str(tmp_path), "--eval_accelerations", "[4]")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())["4"]
    assert m["network"]["ssim"]["n"] == 2
    assert m["network"]["ssim"]["mean"] >= m["zero_filled"]["ssim"]["mean"] + 0.05
    assert m["network"]["psnr"]["mean"] >= m["zero_filled"]["psnr"]["mean"] + 2.0
    assert m["network"]["nmse"]["mean"] < m["zero_filled"]["nmse"]["mean"]
