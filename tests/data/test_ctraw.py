"""Readers of measured CT projections: the generic sinogram + geometry sidecar, HTC2022 .mat
(checked against the organisers' own reconstruction), APS Data Exchange raw counts (flat/dark
normalisation by hand, the rotation centre), view subsets, and every bad input."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from conftest import SHARED, synthetic_counts, write_dxchange

from bundle.data.ctraw import (
    choose_views,
    estimate_rotation_centre,
    geometry_from_json,
    measured_ct_kind,
    read_dxchange,
    read_htc2022,
    read_measured_ct,
    read_sinogram_npy,
)
from bundle.errors import InputError
from bundle.physics.ct_fan import FanBeamGeometry, projector_for
from bundle.physics.ct_geometry import ParallelBeamGeometry

HTC = SHARED / "ct_real" / "htc2022_train"
TOOTH = SHARED / "ct_real" / "tomopy_tooth" / "tooth.h5"
needs_htc = pytest.mark.skipif(not HTC.is_dir(), reason="../shared/data/ct_real (HTC2022) is not here")
needs_tooth = pytest.mark.skipif(not TOOTH.is_file(), reason="../shared/data/ct_real/tomopy_tooth is not here")


def fan_spec(**changes) -> dict:
    spec = {"geometry": "fan_flat", "angles_deg": [float(a) for a in np.arange(0, 360, 12.0)], "detector_count": 64,
            "detector_spacing_mm": 1.0, "detector_offset_mm": 0.0, "source_origin_mm": 200.0,
            "source_detector_mm": 300.0, "image_size": [32, 32], "pixel_mm": 1.0}
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def write_scan(folder, name="scan", sino=None, **changes):
    spec = fan_spec(**changes)
    if sino is None:
        sino = np.random.default_rng(0).random((30, 64)).astype(np.float32)
    np.save(folder / f"{name}_sinogram.npy", sino)
    (folder / f"{name}_geometry.json").write_text(json.dumps(spec))
    return folder / f"{name}_sinogram.npy"


def test_sinogram_and_geometry_sidecar(tmp_path):
    path = write_scan(tmp_path)
    scan = read_sinogram_npy(str(path))
    assert scan.sinogram.shape == (1, 30, 64) and isinstance(scan.geometry, FanBeamGeometry)
    assert scan.geometry.source_origin == 200.0 and scan.geometry.image_shape == (32, 32)
    par = write_scan(tmp_path, "par", geometry="parallel", source_origin_mm=None, source_detector_mm=None,
                     detector_offset_mm=2.0)
    pscan = read_measured_ct(str(par))
    assert isinstance(pscan.geometry, ParallelBeamGeometry) and pscan.geometry.detector_offset == 2.0
    assert measured_ct_kind(str(path))
    # a NIfTI volume's given parallel-beam scan beside it is not a measured input of its own
    (tmp_path / "vol.nii.gz").write_bytes(b"")
    np.save(tmp_path / "vol_sinogram.npy", np.zeros((3, 4), np.float32))
    assert not measured_ct_kind(str(tmp_path / "vol_sinogram.npy"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"pixel_mm": None}, "missing key pixel_mm"),
    ({"source_detector_mm": None}, "missing key source_detector_mm"),
    ({"source_origin_mm": -200.0}, "source_origin_mm must be positive"),
    ({"detector_spacing_mm": 0}, "detector_spacing_mm must be positive"),
    ({"source_detector_mm": 150.0}, "smaller than source_origin_mm"),
    ({"angles_deg": [0.0, 10.0]}, "2 angles in angles_deg but scan_sinogram.npy has 30 views"),
    ({"detector_count": 60}, "detector_count 60 but scan_sinogram.npy has 64 detectors"),
    ({"geometry": "cone"}, "geometry must be"),
    ({"image_size": [100000, 100000], "pixel_mm": 0.001}, "GiB to reconstruct"),
    ({"image_size": [32]}, "image_size must be"),
])
def test_bad_geometry_files(tmp_path, changes, message):
    path = write_scan(tmp_path, **changes)
    with pytest.raises(InputError, match=message) as err:
        read_sinogram_npy(str(path))
    assert "scan_geometry.json" in str(err.value)


def test_bad_sinograms(tmp_path):
    sino = np.ones((30, 64), np.float32)
    sino[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_sinogram_npy(str(write_scan(tmp_path, sino=sino)))
    np.save(tmp_path / "lone_sinogram.npy", np.ones((30, 64), np.float32))
    with pytest.raises(InputError, match="no geometry file lone_geometry.json"):
        read_sinogram_npy(str(tmp_path / "lone_sinogram.npy"))
    with pytest.raises(InputError, match="floating-point"):
        read_sinogram_npy(str(write_scan(tmp_path, "ints", sino=np.ones((30, 64), np.int16))))


def test_dxchange_flat_dark_normalisation_and_centre(tmp_path):
    data, white, dark, theta, p = synthetic_counts()
    path = tmp_path / "scan.h5"
    write_dxchange(path, data, white, dark, theta, pixel=1.0)
    assert measured_ct_kind(str(path))
    scan = read_dxchange(str(path))
    assert scan.sinogram.shape == (2, 90, 64)
    np.testing.assert_allclose(scan.sinogram[0], p, atol=1e-5)  # -log((data - dark) / (flat - dark))
    centre = estimate_rotation_centre(scan.sinogram, theta)
    assert abs(centre - (31.5 + 3.0)) < 0.05
    assert abs(scan.geometry.detector_offset + 3.0) < 0.05


@pytest.mark.parametrize("kind", ["negative", "nan", "flat_dark", "angles"])
def test_bad_dxchange(tmp_path, kind):
    data, white, dark, theta, _ = synthetic_counts()
    message = {"negative": "negative counts", "nan": "NaN", "flat_dark": "flat field is darker",
               "angles": "angles in exchange/theta"}[kind]
    if kind == "negative":
        data[0, 0, 0] = -5
    elif kind == "nan":
        white[0, 0, 0] = np.nan
    elif kind == "flat_dark":
        white[:, 1, 10] = 50.0
    else:
        theta = theta[:-1]
    write_dxchange(tmp_path / "bad.h5", data, white, dark, theta)
    with pytest.raises(InputError, match=message) as err:
        read_dxchange(str(tmp_path / "bad.h5"))
    assert "bad.h5" in str(err.value)


@needs_tooth
def test_tooth_scan_normalisation_by_hand_and_centre():
    scan = read_dxchange(str(TOOTH))
    with h5py.File(TOOTH) as f:
        data, white, dark = (np.asarray(f["exchange"][k], np.float64) for k in ("data", "data_white", "data_dark"))
    flat, d = white.mean(0), dark.mean(0)
    for v, row, col in ((0, 0, 320), (90, 1, 200), (180, 0, 450)):
        expected = -np.log(max((data[v, row, col] - d[row, col]) / (flat[row, col] - d[row, col]),
                               0.5 / (flat[row, col] - d[row, col])))
        assert abs(scan.sinogram[row, v, col] - expected) < 1e-5
    assert scan.sinogram.shape == (2, 181, 640)
    centre = (640 - 1) / 2 - scan.geometry.detector_offset
    assert 294.0 < centre < 298.0  # about 296 px (the data's README)


@needs_htc
def test_htc2022_fbp_matches_the_organisers_reconstruction():
    """Our fan-beam FBP of the full data against the organisers' (ASTRA) FBP shipped with it:
    correlation 0.99998 as read (no registration needed), and the identity is the best of the
    eight flips and quarter turns (the registration)."""
    scan = read_htc2022(str(HTC / "htc2022_ta_full.mat"))
    assert scan.sinogram.shape == (1, 721, 560) and scan.reference.shape == (1, 512, 512)
    assert scan.segmentation is not None and set(np.unique(scan.segmentation)) <= {0, 1}
    rec = projector_for(scan.geometry).fbp(torch.from_numpy(scan.sinogram)).numpy()[0]
    ref = scan.reference[0]
    corrs = {}
    for k in range(4):
        for flip in (False, True):
            a = np.rot90(rec, k)
            corrs[(k, flip)] = np.corrcoef((a[:, ::-1] if flip else a).ravel(), ref.ravel())[0, 1]
    assert max(corrs, key=lambda key: corrs[key]) == (0, False)
    assert corrs[(0, False)] > 0.9999
    assert abs(float((rec * ref).sum() / (rec * rec).sum()) - 1) < 0.005  # the same units: 1/mm


def test_choose_views():
    angles = np.arange(0, 360.5, 0.5)  # HTC2022: 721 views, the last repeating the first
    sparse = choose_views(angles, 60, 360)
    assert len(sparse) == 60 and sparse[:3] == [0, 12, 24]
    limited = choose_views(angles, None, 90, 45)
    assert len(limited) == 181 and angles[limited[0]] == 45 and angles[limited[-1]] == 135
    assert len(choose_views(angles, None, 360)) == 720
    with pytest.raises(InputError, match="requested"):
        choose_views(angles, 1000, 360)


def test_geometry_file_not_json(tmp_path):
    (tmp_path / "g.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON"):
        geometry_from_json(str(tmp_path / "g.json"))
    assert not os.path.exists(tmp_path / "nothing.json")
    with pytest.raises(InputError, match="file not found"):
        geometry_from_json(str(tmp_path / "nothing.json"))
