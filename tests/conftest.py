"""Shared fixtures: small NIfTI volumes in a temporary folder, written with nibabel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

# The README's test command runs the suite in pytest-xdist workers (`-n 2`): most of a bundle run's
# time is Python importing MONAI on one core, so two run side by side. Each worker, and each
# process it starts, then gets its share of the cores: two workers that each start one OpenMP
# thread per core slow each other down.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS) if hasattr(os, "sched_getaffinity") else 1
if WORKERS > 1:
    torch.set_num_threads(THREADS)


def phantom_volume(shape=(40, 48, 10), seed=0) -> np.ndarray:
    """A head-like phantom: an ellipse of tissue with a few brighter and darker blobs, per slice."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    vol = np.zeros(shape, dtype=np.float32)
    for z in range(shape[2]):
        r = 0.8 - 0.02 * abs(z - shape[2] / 2)
        img = ((x / r) ** 2 + (y / (r * 0.9)) ** 2 < 1).astype(np.float32) * 100
        for _ in range(4):
            cx, cy, rad = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.05, 0.2)
            img[(x - cx) ** 2 + (y - cy) ** 2 < rad**2] += rng.uniform(-50, 80)
        vol[..., z] = np.clip(img, 0, None)
    return vol


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> dict:
    """Five phantom subjects as NIfTI and a datalist split by subject (3 / 1 / 1)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    names = []
    for i in range(5):
        name = f"sub-{i:02d}.nii.gz"
        write_nifti(data_dir / name, phantom_volume(seed=i))
        names.append(name)
    datalist = {
        "training": [{"image": n} for n in names[:3]],
        "validation": [{"image": names[3]}],
        "test": [{"image": names[4]}],
    }
    path = data_dir / "datalist.json"
    path.write_text(json.dumps(datalist))
    return {"dataset_dir": str(data_dir), "datalist": str(path), "names": names}


def small_training_set(folder: Path) -> list[str]:
    """Three phantom subjects (two to train, one to validate) and the options that point at them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"s{i}.nii.gz" for i in range(3)]
    for i, n in enumerate(names):
        write_nifti(folder / n, phantom_volume((40, 48, 6), seed=i))
    (folder / "datalist.json").write_text(json.dumps({"training": [{"image": n} for n in names[:2]],
                                                      "validation": [{"image": names[2]}]}))
    return ["--dataset_dir", str(folder), "--datalist", str(folder / "datalist.json")]


def run_bundle(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run ARGS` from the repository root, output captured."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    return subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=timeout)


def run_inference(config: str, input_dir, out, *extra) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run --config_file CONFIG --input_dir IN --output_dir OUT EXTRA`."""
    return run_bundle("--config_file", config, "--input_dir", str(input_dir), "--output_dir", str(out), *extra)


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if WORKERS > 1:
        env["OMP_NUM_THREADS"] = str(THREADS)
    return env


def write_dxchange(path, data, white, dark, theta, pixel=None):
    """An APS Data Exchange HDF5 file of raw counts, flats, darks and angles (degrees)."""
    import h5py

    with h5py.File(path, "w") as f:
        f["exchange/data"] = data
        f["exchange/data_white"] = white
        f["exchange/data_dark"] = dark
        f["exchange/theta"] = theta
        if pixel is not None:
            f["measurement/instrument/detector/pixel_size"] = pixel


def synthetic_counts(centre_shift=3.0, n_det=64, views=90):
    """Raw counts of a parallel-beam scan of an off-centre disc with the rotation axis `centre_shift`
    bins right of the detector centre, I0 = 1000 above a dark level of 100."""
    from bundle.physics.ct_fan import projector_for
    from bundle.physics.ct_geometry import ParallelBeamGeometry

    theta = np.arange(views) * 180.0 / views
    geom = ParallelBeamGeometry((48, 48), (1.0, 1.0), n_views=views, n_detectors=n_det, detector_spacing=1.0,
                                angles_deg=tuple(theta), detector_offset=-centre_shift)
    c = np.arange(48) - 23.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    img = torch.from_numpy((((xx - 6) ** 2 + (yy + 4) ** 2) < 81).astype(np.float64) * 0.05)
    p = projector_for(geom).A(img[None]).numpy()[0]  # (V, D)
    counts = 100 + 1000 * np.exp(-p)
    data = np.stack([counts, counts], axis=1)  # two detector rows (slices)
    white = np.full((3, 2, n_det), 1100.0)
    dark = np.full((2, 2, n_det), 100.0)
    return data, white, dark, theta, p


