"""A real MONAI Label server on 127.0.0.1 serving the packed bundle: `/infer` must return the CLI's
`_recon` (to float tolerance) with the input's shape and affine, for RAS, LAS and PSR inputs, with
MONAI Label's own sample app (`monaibundle`) and with the bundle's app (`monailabel_app/`, which
declares the output an image). Slow: MONAI Label is installed beside the bundle's environment
first (scripts/install_monailabel.py, ~1 min once; skipped when pip cannot reach an index), and
each server start takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, phantom_volume, run_env

pytestmark = pytest.mark.slow

SITE = Path(os.environ.get("BUNDLE_MONAILABEL_SITE", ROOT / ".monailabel"))
ORIENTATIONS = {
    "RAS": np.diag([2.0, 2.0, 3.0, 1.0]),
    "LAS": np.array([[-2.0, 0, 0, 5], [0, 2.0, 0, 7], [0, 0, 3.0, -9], [0, 0, 0, 1]]),
    "PSR": np.array([[0, 0, 3.0, 5], [-2.0, 0, 0, 7], [0, 2.0, 0, -9], [0, 0, 0, 1]]),  # as the IXI volumes
}


@pytest.fixture(scope="module")
def site():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_monailabel.py"), "--target", str(SITE)],
                         capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        pytest.skip(f"MONAI Label could not be installed here: {res.stderr.strip()[-300:]}")
    return SITE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_file(url: str, path: Path) -> bytes:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


class Server:
    """`python -m monailabel.main start_server` in its own process group, stopped on exit."""

    def __init__(self, site: Path, app: Path, studies: Path, models: str, log: Path) -> None:
        self.port = free_port()
        env = run_env()
        env["PYTHONPATH"] = str(site)  # the bundle itself comes from the packed folder (MONAI Label's sys.path)
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--conf", "models", models, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
               "--conf", "skip_trainers", "true", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=str(app), env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"MONAI Label server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=5) as r:
                    self.info = json.loads(r.read())
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        self.stop()
        raise AssertionError(f"MONAI Label server did not answer: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def packed_app(tmp: Path, app_source: Path, modalities: list[str]) -> tuple[Path, list[str]]:
    """A copy of the app with one bundle folder per modality in its model/ (scripts/pack_bundle.py)."""
    app = tmp / "app"
    shutil.copytree(app_source, app)
    names = []
    for modality in modalities:
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "pack_bundle.py"), "--out-dir", str(tmp / "dist"),
                              "--modality", modality], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        zip_path = Path(res.stdout.split("wrote ")[1].split(" (")[0])
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(app / "model")
            names.append(zf.namelist()[0].split("/")[0])
    return app, names


def cli_recon(config: str, path: Path, out: Path) -> np.ndarray:
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--input_dir",
                          str(path.parent), "--output_dir", str(out)], cwd=ROOT, env=run_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return np.asarray(nib.load(str(out / path.name.replace(".nii.gz", "_recon.nii.gz"))).dataobj, dtype=np.float32)


def isotropic(affine: np.ndarray, mm: float = 2.0) -> np.ndarray:
    """The same orientation with `mm` voxels (PET slices need square pixels in every orientation)."""
    out = affine.copy()
    out[:3, :3] = np.sign(affine[:3, :3]) * mm
    return out


def check_orientations(server: Server, model: str, config: str, volume: np.ndarray, tmp: Path,
                       orientations: dict | None = None) -> list[str]:
    report = []
    for name, affine in (orientations or ORIENTATIONS).items():
        folder = tmp / f"in_{model}_{name}"
        folder.mkdir()
        path = folder / f"{name.lower()}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        out = tmp / f"{model}_{name}_pred.nii.gz"
        out.write_bytes(post_file(f"{server.url}/infer/{model}?output=image", path))
        pred = nib.load(str(out))
        served = np.asarray(pred.dataobj, dtype=np.float32)
        expected = cli_recon(config, path, tmp / f"cli_{model}_{name}")
        assert served.shape == volume.shape, (name, served.shape)
        np.testing.assert_allclose(pred.affine, affine, atol=1e-4, err_msg=name)
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-4 * scale, err_msg=name)
        report.append(f"{model} {name}: max |served - CLI| = {np.abs(served - expected).max() / scale:.1e} of the peak")
    return report


def test_sample_app_serves_the_mri_bundle_in_every_orientation(site, tmp_path):
    app, (name,) = packed_app(tmp_path, site / "apps" / "monaibundle", ["mri"])
    (tmp_path / "studies").mkdir()
    server = Server(site, app, tmp_path / "studies", name, tmp_path / "server.log")
    try:
        volume = (phantom_volume((40, 48, 40), seed=3) * 10).astype(np.float32)
        report = check_orientations(server, name, "configs/inference.yaml", volume, tmp_path)
        # the same volume uploaded twice (random temporary names on the server) gives the same output
        again = tmp_path / "again"
        again.mkdir()
        path = again / "other_name.nii.gz"
        nib.save(nib.Nifti1Image(volume, ORIENTATIONS["LAS"]), str(path))
        first = np.asarray(nib.load(str(tmp_path / f"{name}_LAS_pred.nii.gz")).dataobj)
        out = tmp_path / "again_pred.nii.gz"
        out.write_bytes(post_file(f"{server.url}/infer/{name}?output=image", path))
        np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), first)
    finally:
        server.stop()
    assert server.proc.poll() is not None
    print("\n".join(report))


def test_bundle_app_serves_mri_ct_and_pet_as_images(site, tmp_path):
    app, names = packed_app(tmp_path, ROOT / "monailabel_app", ["mri", "ct", "pet"])
    (tmp_path / "studies").mkdir()
    server = Server(site, app, tmp_path / "studies", ",".join(names), tmp_path / "server.log")
    try:
        for name in names:
            info = server.info["models"][name]
            assert info["type"] == "others" and info["labels"] == {} and info["dimension"] == 3, info
        mri, ct, pet = names
        report = check_orientations(server, mri, "configs/inference.yaml",
                                    (phantom_volume((40, 48, 40), seed=4) * 10).astype(np.float32), tmp_path)
        head = (phantom_volume((48, 48, 24), seed=5) * 10 - 1000).astype(np.float32)  # HU
        report += check_orientations(server, ct, "configs/inference_ct.yaml", head, tmp_path)
        activity = (phantom_volume((48, 48, 24), seed=6) / 25).astype(np.float32)
        report += check_orientations(server, pet, "configs/inference_pet.yaml", activity, tmp_path,
                                     {name: isotropic(a) for name, a in ORIENTATIONS.items()})
    finally:
        server.stop()
    assert server.proc.poll() is not None
    print("\n".join(report))
