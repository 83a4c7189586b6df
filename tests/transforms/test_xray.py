"""Low-dose radiographs: the Poisson-Gaussian dose model, the DICOM conversion of the pip-shipped
radiographs, and training / evaluation / inference through `python -m monai.bundle run`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_bundle

from bundle.errors import InputError
from bundle.data.demo import dicom_radiograph_to_nifti
from bundle.physics.noise import low_dose_radiograph as low_dose_image
from bundle.transforms.xray import LowDoseRadiographd

TINY = ["--features", "[4,4,8,8,16,4]"]
XR = "['configs/train.yaml','configs/train_xray.yaml']"
XR_EVAL = "['configs/train.yaml','configs/train_xray.yaml','configs/evaluate_xray.yaml']"


@pytest.mark.parametrize("i0,sigma", [(50.0, 0.0), (1000.0, 0.0), (200.0, 3.0)])
def test_poisson_gaussian_dose_model(i0, sigma):
    x = torch.full((200_000,), 0.6)
    y = low_dose_image(x, i0, sigma, torch.Generator().manual_seed(0)).double()
    n = x.numel()
    var = 0.6 / i0 + (sigma / i0) ** 2  # Poisson variance of counts / I0, plus electronic noise
    assert abs(float(y.mean()) - 0.6) < 5 * (var / n) ** 0.5  # unbiased
    assert abs(float(y.var()) / var - 1) < 5 * (2 / n) ** 0.5


def test_low_dose_transform_deterministic_and_checked():
    d = {"image": torch.rand(1, 16, 16), "slice_id": "a:0"}
    t = LowDoseRadiographd("image", 100.0, 1.0, deterministic=True)
    assert torch.equal(t(d)["image"], t(d)["image"]) and torch.equal(t(d)["label"], d["image"])
    with pytest.raises(InputError, match="must be positive"):
        LowDoseRadiographd("image", -10.0)
    with pytest.raises(InputError, match=">= 0"):
        LowDoseRadiographd("image", 100.0, electronic_noise=-1.0)


def test_pip_radiograph_converts_with_bone_bright(tmp_path):
    data = pytest.importorskip("pydicom.data")
    src = data.get_testdata_file("RG3_UNCR.dcm")
    if src is None:
        pytest.skip("pydicom-data is not installed")
    import pydicom

    out = dicom_radiograph_to_nifti(src, str(tmp_path / "tibia.nii.gz"), downsample=4)
    img = nib.load(out)
    raw = pydicom.dcmread(src).pixel_array.astype(float)
    assert img.shape == (raw.shape[1] // 4, raw.shape[0] // 4, 1)
    arr = img.get_fdata()[:, :, 0].T
    # MONOCHROME1 is inverted: the brightest stored pixel becomes the darkest
    block = raw[:4, :4].mean()
    assert np.isclose(arr[0, 0], raw.max() - block)


def radiograph_phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 56), indexing="ij")
    img = 0.3 + 0.4 * np.exp(-(x**2) / 0.2) + 0.2 * (np.abs(y - rng.uniform(-0.3, 0.3)) < 0.1)
    return (img * 1000)[:, :, None].astype(np.float32)


def test_xray_train_evaluate_infer_two_iterations(tmp_path):
    d = tmp_path / "xr"
    d.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(radiograph_phantom(i), np.diag([0.5, 0.5, 1.0, 1.0])), str(d / f"r{i}.nii.gz"))
    (d / "datalist.json").write_text(json.dumps({"training": [{"image": "r0.nii.gz"}],
                                                 "validation": [{"image": "r1.nii.gz"}], "test": [{"image": "r2.nii.gz"}]}))
    common = ["--dataset_dir", str(d), "--datalist", str(d / "datalist.json"), "--ckpt_dir", str(tmp_path / "m"),
              "--output_dir", str(tmp_path / "eval"), "--batch_size", "2", "--patch_size", "[32,32]", "--repeat", "2",
              *TINY]

    res = run_bundle("training", "--config_file", XR, "--max_epochs", "1", "--epoch_length", "2", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "m" / "model_xray.pt").is_file()
    res = run_bundle("--config_file", XR_EVAL, "--eval_doses", "[100,1000]", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"100", "1000"}
    assert set(metrics["100"]) == {"network", "low_dose"}
    assert metrics["100"]["low_dose"]["psnr"]["mean"] < metrics["1000"]["low_dose"]["psnr"]["mean"] - 5  # 10 dB

    out = tmp_path / "out"
    res = run_bundle("--config_file", "configs/inference_xray.yaml", "--input_dir", str(d), "--output_dir", str(out),
              "--ckpt_path", str(tmp_path / "m" / "model_xray.pt"), *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    for i in range(3):
        src = nib.load(str(d / f"r{i}.nii.gz"))
        for kind in ("recon", "low_dose"):
            img = nib.load(str(out / f"r{i}_{kind}.nii.gz"))
            assert img.shape == src.shape
            np.testing.assert_allclose(img.affine, src.affine)
        noisy = nib.load(str(out / f"r{i}_low_dose.nii.gz")).get_fdata()
        assert abs(noisy.mean() / src.get_fdata().mean() - 1) < 0.02  # same intensity scale as the input


def test_shipped_radiograph_model_denoises_the_chest(tmp_path):
    """models/model_xray.pt, trained on the tibia, on the chest radiograph at the trained dose.
    Measured: 33.4 dB vs 24.3 dB for the low-dose image."""
    pytest.importorskip("pydicom.data")
    res = run_bundle("--config_file", XR_EVAL, "--output_dir", str(tmp_path), "--eval_doses", "[200]")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())["200"]
    assert m["network"]["psnr"]["mean"] >= m["low_dose"]["psnr"]["mean"] + 5.0
    assert m["network"]["ssim"]["mean"] >= m["low_dose"]["ssim"]["mean"] + 0.3


def test_unreadable_dicom_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(InputError, match="bad.dcm: cannot be read as a DICOM image"):
        dicom_radiograph_to_nifti(str(bad), str(tmp_path / "out.nii.gz"))
    assert not (tmp_path / "out.nii.gz").exists()
