"""Measured CT through `python -m monai.bundle run --config_file configs/inference_ct.yaml`:
a generic fan-beam sinogram with its geometry file (no image), an HTC2022 scan, a Data Exchange
file; the outputs on the geometry's grid in 1/mm; every bad input stopping with one line before
anything is written; and a 2-iteration training run on measured data."""

from __future__ import annotations

import json
import shutil
from functools import partial

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHARED, run_bundle, run_inference

from bundle.data.ctraw import read_measured_ct
from bundle.physics.ct_fan import FanBeamGeometry, projector_for

HTC = SHARED / "ct_real" / "htc2022_train"
needs_htc = pytest.mark.skipif(not HTC.is_dir(), reason="../shared/data/ct_real (HTC2022) is not here")


def phantom_scan(folder, name="phantom", views=60, n=64, **changes):
    """A fan-beam scan of two discs (acrylic-like 0.045/mm in air), simulated with our projector,
    written as <name>_sinogram.npy + <name>_geometry.json."""
    spec = {"geometry": "fan_flat", "angles_deg": [float(a) for a in np.arange(views) * 360.0 / views],
            "detector_count": 120, "detector_spacing_mm": 1.0, "detector_offset_mm": 0.5,
            "source_origin_mm": 200.0, "source_detector_mm": 320.0, "image_size": [n, n], "pixel_mm": 0.8}
    spec.update(changes)
    geom = FanBeamGeometry((n, n), (0.8, 0.8), tuple(spec["angles_deg"]), 120, 1.0, 200.0, 320.0, 0.5)
    c = (np.arange(n) - (n - 1) / 2) * 0.8
    yy, xx = np.meshgrid(c, c, indexing="ij")
    img = 0.045 * ((xx**2 + yy**2) < 22**2) - 0.045 * (((xx - 6) ** 2 + (yy + 5) ** 2) < 5**2)
    sino = projector_for(geom).A(torch.from_numpy(img)[None]).numpy()[0].astype(np.float32)
    np.save(folder / f"{name}_sinogram.npy", sino)
    (folder / f"{name}_geometry.json").write_text(json.dumps({k: v for k, v in spec.items() if v is not None}))
    return img


infer = partial(run_inference, "configs/inference_ct.yaml")


def test_generic_fan_sinogram_end_to_end(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    img = phantom_scan(inputs)
    out = tmp_path / "out"
    # a noise-free simulated scan can be trusted: a small DC weight (the shipped 1.0 is for noisy
    # measured views, where the data pull away from the full-data reference)
    res = infer(inputs, out, "--measured_dc_weight", "0.001")
    assert res.returncode == 0, res.stderr[-3000:]
    recon = nib.load(out / "phantom_recon.nii.gz")
    fbp = nib.load(out / "phantom_fbp.nii.gz")
    assert recon.shape == (64, 64, 1) and fbp.shape == (64, 64, 1)
    np.testing.assert_allclose(np.diag(recon.affine)[:2], [0.8, 0.8])
    # the FBP output is our fan-beam FBP of the measured sinogram, in 1/mm
    scan = read_measured_ct(str(inputs / "phantom_sinogram.npy"))
    expected = projector_for(scan.geometry).fbp(torch.from_numpy(scan.sinogram)).numpy()[0]
    np.testing.assert_allclose(fbp.get_fdata()[..., 0], expected, atol=1e-5)
    # the reconstruction is closer to the object than the 60-view FBP
    r = recon.get_fdata()[..., 0]
    assert np.abs(r - img).mean() < np.abs(expected - img).mean()
    assert sorted(p.name for p in out.iterdir()) == ["phantom_fbp.nii.gz", "phantom_recon.nii.gz"]


def test_tv_and_fbp_methods(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    img = phantom_scan(inputs, views=30)
    out = tmp_path / "tv"
    res = infer(inputs, out, "--measured_ct_method", "tv", "--tv_iterations", "100")
    assert res.returncode == 0, res.stderr[-3000:]
    tv = nib.load(out / "phantom_recon.nii.gz").get_fdata()[..., 0]
    fbp = nib.load(out / "phantom_fbp.nii.gz").get_fdata()[..., 0]
    assert np.abs(tv - img).mean() < 0.6 * np.abs(fbp - img).mean()


BAD_GEOMETRY = {
    "missing_key": ({"pixel_mm": None}, "missing key pixel_mm"),
    "negative_distance": ({"source_origin_mm": -200.0}, "must be positive"),
    "detector_inside": ({"source_detector_mm": 100.0}, "smaller than source_origin_mm"),
    "detector_count": ({"detector_count": 100}, "detector_count 100"),
    "huge_grid": ({"image_size": [200000, 200000], "pixel_mm": 0.0001}, "GiB"),
}


def _bad(kind, folder):
    if kind == "no_geometry":
        phantom_scan(folder, "x")
        (folder / "x_geometry.json").unlink()
        return "x_sinogram.npy", "no geometry file"
    if kind in BAD_GEOMETRY:  # one changed key of the geometry file
        changes, message = BAD_GEOMETRY[kind]
        phantom_scan(folder, "x", **changes)
        return "x_geometry.json", message
    if kind == "angle_count":
        phantom_scan(folder, "x")
        spec = json.loads((folder / "x_geometry.json").read_text())
        spec["angles_deg"] = spec["angles_deg"][:-1]
        (folder / "x_geometry.json").write_text(json.dumps(spec))
        return "x_geometry.json", "59 angles"
    if kind == "nan":
        phantom_scan(folder, "x")
        s = np.load(folder / "x_sinogram.npy")
        s[2, 3] = np.nan
        np.save(folder / "x_sinogram.npy", s)
        return "x_sinogram.npy", "NaN"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_geometry", "missing_key", "negative_distance", "detector_inside",
                                  "angle_count", "detector_count", "nan", "huge_grid"])
def test_bad_measured_input_stops_with_one_line_and_writes_nothing(tmp_path, kind):
    inputs = tmp_path / "in"
    inputs.mkdir()
    phantom_scan(inputs, "good")  # a good scan first: nothing of it may be written either
    name, message = _bad(kind, inputs)
    out = tmp_path / "out"
    res = infer(inputs, out)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and name in lines[0] and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())


@needs_htc
def test_htc2022_scan_through_the_bundle(tmp_path):
    """A sparse HTC2022 scan (60 of the measured views, as a .mat like the challenge's): the
    network's reconstruction beats FBP against the organisers' full-data reconstruction."""
    import scipy.io

    full = scipy.io.loadmat(HTC / "htc2022_td_full.mat", squeeze_me=True, struct_as_record=False)["CtDataFull"]
    idx = np.arange(0, 720, 12)
    params = {k: getattr(full.parameters, k) for k in full.parameters._fieldnames}
    params["angles"] = np.asarray(full.parameters.angles)[idx]
    inputs = tmp_path / "in"
    inputs.mkdir()
    scipy.io.savemat(inputs / "htc2022_td_limited.mat",
                     {"CtDataLimited": {"sinogram": np.asarray(full.sinogram)[idx], "parameters": params}})
    shutil.copy(HTC / "htc2022_td_full_recon_fbp.mat", inputs / "htc2022_td_full_recon_fbp.mat")
    out = tmp_path / "out"
    res = infer(inputs, out, "--measured_dc_iterations", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    ref = read_measured_ct(str(inputs / "htc2022_td_limited.mat")).reference[0]
    recon = nib.load(out / "htc2022_td_limited_recon.nii.gz").get_fdata()[..., 0]
    fbp = nib.load(out / "htc2022_td_limited_fbp.nii.gz").get_fdata()[..., 0]
    assert recon.shape == (512, 512)
    rmse = lambda a: float(np.sqrt(((a - ref) ** 2).mean()))  # noqa: E731
    assert rmse(recon) < 0.7 * rmse(fbp)


@needs_htc
def test_two_training_iterations_on_measured_data(tmp_path):
    res = run_bundle("training", "--meta_file", "configs/metadata.json", "--config_file",
                     "['configs/train.yaml','configs/train_ct.yaml','configs/train_ct_real.yaml']",
                     "--logging_file", "configs/logging.conf", "--ckpt_dir", str(tmp_path), "--output_dir",
                     str(tmp_path), "--max_epochs", "1", "--epoch_length", "2", "--batch_size", "2",
                     "--real_train", "['htc2022_ta_full.mat']", "--real_validation", "['htc2022_td_full.mat']",
                     "--real_subsets", "[[30, 360]]", "--real_offsets", "1",
                     "--patch_size", "[64, 64]", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "model_ct_real.pt", weights_only=True)
    assert saved and all(torch.isfinite(v).all() for v in saved.values() if torch.is_tensor(v))


def test_data_exchange_file_through_the_bundle(tmp_path):
    """Raw counts with flats and darks (two detector rows): both slices reconstructed on a
    columns x columns grid about the estimated rotation axis."""
    from conftest import synthetic_counts, write_dxchange

    data, white, dark, theta, _ = synthetic_counts()
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_dxchange(inputs / "sample.h5", data, white, dark, theta, pixel=1.0)
    out = tmp_path / "out"
    res = infer(inputs, out, "--measured_ct_method", "fbp")
    assert res.returncode == 0, res.stderr[-3000:]
    fbp = nib.load(out / "sample_fbp.nii.gz").get_fdata()
    assert fbp.shape == (64, 64, 2)
    np.testing.assert_allclose(fbp[..., 0], fbp[..., 1], atol=1e-6)
    # the disc of 0.05/mm (radius 9 px) comes back at its attenuation, centred where it was
    c = np.arange(64) - 31.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = ((xx - 6) ** 2 + (yy + 4) ** 2) < 6**2
    assert abs(fbp[..., 0][inside].mean() - 0.05) < 0.002


def test_measured_ct_given_to_the_mri_config_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    phantom_scan(inputs)
    res = run_bundle("--config_file", "configs/inference.yaml", "--input_dir", str(inputs), "--output_dir",
                     str(tmp_path / "out"))
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and len(lines) == 1 and "configs/inference_ct.yaml" in lines[0], res.stderr[-2000:]


def test_rebinning_option_and_limited_angle_weight(tmp_path):
    """`measured_fbp: rebin` gives nearly the fan-beam FBP on a full-circle scan; a limited-angle
    scan is recognised as such and gets its own data-consistency weight."""
    from bundle.inference.ct_measured import MeasuredCTReconstructor, limited_angle
    from bundle.networks import ResidualUNet
    from bundle.physics.ct_fan import select_views

    phantom_scan(tmp_path, views=360)
    scan = read_measured_ct(str(tmp_path / "phantom_sinogram.npy"))
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=False, norm=None)
    fan = MeasuredCTReconstructor(net, method="fbp", progress=False).reconstruct_scan(scan, "p")["fbp"]
    rebin = MeasuredCTReconstructor(net, method="fbp", fbp="rebin", progress=False).reconstruct_scan(scan, "p")["fbp"]
    assert np.corrcoef(fan.ravel(), rebin.ravel())[0, 1] > 0.995
    assert not limited_angle(scan.geometry)
    assert limited_angle(select_views(scan.geometry, range(0, 90)))  # 90 of 360 degrees
    assert not limited_angle(select_views(scan.geometry, range(0, 359, 6)))  # sparse, all around
