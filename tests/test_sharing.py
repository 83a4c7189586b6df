"""Sharing the bundle: model-zoo checks (metadata schema, network input/output, TorchScript and ONNX
exports), the MONAI Label inference contract, MONAI Label style datalists, and the zip."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, phantom_volume, run_bundle, run_env, write_nifti

SCHEMA = ROOT / "configs" / "meta_schema.json"


def monai_bundle(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=run_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_metadata_validates_against_the_vendored_schema(tmp_path):
    import jsonschema

    res = monai_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "metadata is verified with no error" in res.stdout + res.stderr
    schema = json.loads(SCHEMA.read_text())
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, schema)
    # the schema has teeth: each mandatory field, a wrong type, a malformed tensor description
    for key in schema["required"]:
        broken = {k: v for k, v in meta.items() if k != key}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    for path, value in ((("version",), 3), (("network_data_format", "inputs", "image", "num_channels"), "one"),
                        (("network_data_format", "outputs", "pred", "dtype"), "float"),
                        (("changelog",), {"latest": "x"})):
        broken = copy.deepcopy(meta)
        node = broken
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_version_and_changelog_move_together():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    versions = sorted(meta["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert meta["version"] == versions[-1]
    assert list(meta["changelog"])[0] == meta["version"]  # newest first
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == meta["version"]


def test_model_zoo_checks_with_their_defaults(tmp_path):
    """As the model zoo's CI (ci/verify_bundle.py) runs them: verify_net_in_out with no --n, and
    ckpt_export of models/model.pt with no key_in_ckpt (the weights stay a plain state dict; their
    metadata rides in its `_metadata`)."""
    res = monai_bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                       "--config_file", "configs/inference.yaml", "--bundle_root", ".")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data shape of network is verified with no error" in res.stdout + res.stderr
    res = monai_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "verify_model.ts"), "--ckpt_file",
                       "models/model.pt", "--meta_file", "configs/metadata.json", "--config_file",
                       "configs/inference.yaml", "--bundle_root", ".")
    assert res.returncode == 0, res.stderr[-2000:]
    torch.jit.load(str(tmp_path / "verify_model.ts"))
    torch.jit.load(str(ROOT / "models" / "model.ts"))


def test_torchscript_and_onnx_exports_match_pytorch(tmp_path):
    res = subprocess.run([sys.executable, "scripts/export.py", "--out-dir", str(tmp_path), "--size", "64"], cwd=ROOT,
                         env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from bundle.networks import ResidualUNet, load_checkpoint

    net = load_checkpoint(ResidualUNet(), str(ROOT / "models" / "model.pt")).eval()
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 80, 96)  # any size: the network pads to a multiple of 16
    k = torch.randn(1, 2, 80, 96)
    m = torch.zeros(1, 1, 1, 96)
    m[..., ::4] = 1
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x, k, m).numpy(), net(x, k, m).numpy(), atol=1e-5)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
        x2 = torch.rand(3, 1, 64, 112)
        np.testing.assert_allclose(sess.run(None, {"image": x2.numpy()})[0], net(x2).numpy(), atol=1e-4)


def test_shipped_exports_are_those_of_the_shipped_weights():
    """models/model.ts is the export of the committed models/model.pt. The README's main job
    retrains and replaces model.pt in place (not the exports): in such a checkout this is skipped
    with the reason, not failed (rerun scripts/export.py to refresh the exports)."""
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "models/model.pt"], cwd=ROOT,
                             capture_output=True)
    if changed.returncode == 1:
        pytest.skip("models/model.pt differs from the committed weights (retrained here, e.g. by the README's "
                    "main job); the shipped exports belong to the committed ones")
    from bundle.networks import ResidualUNet, load_checkpoint

    net = load_checkpoint(ResidualUNet(), str(ROOT / "models" / "model.pt")).eval()
    shipped = torch.jit.load(str(ROOT / "models" / "model.ts"))
    x = torch.rand(1, 1, 80, 96)
    with torch.no_grad():
        np.testing.assert_allclose(shipped(x).numpy(), net(x).numpy(), atol=1e-5)


def test_monai_label_inference_contract(tmp_path):
    """What MONAI Label's BundleInferTask does with configs/inference.yaml, in process: parse it
    alone, build `network_def` and load models/model.pt, run `preprocessing` on {"image": path},
    call `inferer(image[None], network)`, put the result in "pred" and run `postprocessing`. The
    result must be the CLI's `_recon` in the input's own voxel order (MONAI Label then writes it
    with the input's affine). tests/test_monai_label_server.py checks the same against a real
    MONAI Label server (slow)."""
    from monai.bundle import ConfigParser

    text = (ROOT / "configs" / "inference.yaml").read_text()
    assert not re.search(r"%[^\s]*\.(json|yaml)", text)  # stands alone: no macro from another config file
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert next(iter(meta["network_data_format"]["inputs"])) == "image"
    assert next(iter(meta["network_data_format"]["outputs"])) == "pred"

    vol = phantom_volume((40, 48, 24), seed=3) * 10
    affine = np.array([[0, 0, 3.0, 5], [-2.0, 0, 0, 7], [0, 2.0, 0, -9], [0, 0, 0, 1]])  # not RAS (PSR)
    path = write_nifti(tmp_path / "case.nii.gz", vol, affine)

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    parser.config["bundle_root"] = str(ROOT)
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(str(ROOT / "models" / "model.pt"), map_location="cpu", weights_only=True))
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    from monai.inferers import Inferer

    assert isinstance(inferer, Inferer)
    data = pre({"image": str(path)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    data = post(data)
    assert tuple(data["pred"].shape) == (1, *vol.shape)  # the input's voxel order, not RAS

    res = run_bundle("--config_file", "configs/inference.yaml", "--input_dir", str(tmp_path), "--output_dir",
                     str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    img = nib.load(str(tmp_path / "out" / "case_recon.nii.gz"))
    recon = np.asarray(img.dataobj, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(data["pred"][0]), recon, rtol=1e-5, atol=1e-4 * recon.max())


def test_train_accepts_monai_label_datalists(tmp_path):
    """MONAI Label passes {"image", "label"} items; the label is the fully sampled reference."""
    data = tmp_path / "data"
    data.mkdir()
    items = []
    for i in range(3):
        write_nifti(data / f"img{i}.nii.gz", phantom_volume(seed=10 + i) * 0.3)  # e.g. a degraded copy
        write_nifti(data / f"ref{i}.nii.gz", phantom_volume(seed=i))
        items.append({"image": f"img{i}.nii.gz", "label": f"ref{i}.nii.gz"})
    (data / "datalist.json").write_text(json.dumps({"training": items[:2], "validation": items[2:]}))
    res = run_bundle("training", "--meta_file", "configs/metadata.json", "--config_file", "configs/train.yaml",
                     "--logging_file", "configs/logging.conf", "--dataset_dir", str(data), "--datalist",
                     str(data / "datalist.json"), "--ckpt_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "e"),
                     "--max_epochs", "1", "--epoch_length", "2", "--batch_size", "2", "--patch_size", "[32,32]",
                     "--features", "[4,4,8,8,16,4]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "m" / "model.pt").is_file()
    from bundle.data import SliceDataset, load_datalist

    loaded = load_datalist(str(data / "datalist.json"), str(data), "training")
    ds = SliceDataset(loaded[:1], lambda d: {"image": torch.from_numpy(nib.load(d["image"]).get_fdata()[None]).float(),
                                             "image_scale": 1.0}, progress=False)
    assert ds[0]["filename"].endswith("ref0.nii.gz")  # the label is the volume


def test_zip_runs_from_another_folder(tmp_path):
    res = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--out-dir", str(tmp_path / "dist")], cwd=ROOT,
                         env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (zip_path,) = (tmp_path / "dist").glob("mri_ct_reconstruction_v*.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"mri_ct_reconstruction"}
        assert not any("__pycache__" in n for n in names)
        zf.extractall(tmp_path / "unpacked")
    root = tmp_path / "unpacked" / "mri_ct_reconstruction"
    for rel in ("configs/metadata.json", "configs/inference.yaml", "models/model.pt", "LICENSE", "docs/README.md",
                "bundle/__init__.py"):
        assert (root / rel).is_file(), rel
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(ROOT / "bundle" / "demo_data" / "ixi_t1_2mm" / "IXI049-HH-1358-T1_ds.nii.gz", inp)
    env = {k: v for k, v in run_env().items() if k != "PYTHONPATH"}  # nothing from the repository
    check = subprocess.run([sys.executable, "-c", "import bundle; print(bundle.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True)
    assert str(root) in check.stdout, check.stdout + check.stderr
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
                          "--input_dir", str(inp), "--output_dir", str(tmp_path / "out")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = nib.load(str(tmp_path / "out" / "IXI049-HH-1358-T1_ds_recon.nii.gz"))
    assert out.shape == nib.load(str(inp / "IXI049-HH-1358-T1_ds.nii.gz")).shape


def test_one_model_folders_for_monai_label(tmp_path):
    """`pack_bundle.py --modality ct` (and --weights): configs/inference.yaml is that modality's
    config, models/ holds only its weights (MONAI Label offers every models/*.pt), and the network
    built by the folder's config is the one its model.pt fits."""
    from monai.bundle import ConfigParser

    from bundle.networks import load_checkpoint

    for modality, weights, config in (("ct", None, "inference_ct.yaml"), ("mri", "model_light.pt", "inference.yaml")):
        args = ["--modality", modality] + (["--weights", weights] if weights else [])
        res = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--out-dir", str(tmp_path / "dist"), *args],
                             cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        with zipfile.ZipFile(res.stdout.split("wrote ")[1].split(" (")[0]) as zf:
            name = zf.namelist()[0].split("/")[0]
            zf.extractall(tmp_path)
        folder = tmp_path / name
        assert (folder / "configs" / "inference.yaml").read_text() == (ROOT / "configs" / config).read_text()
        models = sorted(p.name for p in (folder / "models").iterdir())
        assert models == sorted({"model.pt", weights or f"model_{modality}.pt"}), models
        meta = json.loads((folder / "configs" / "metadata.json").read_text())
        assert meta["name"] == f"{modality.upper()} reconstruction"
        parser = ConfigParser()
        parser.read_config(str(folder / "configs" / "inference.yaml"))
        parser.config["bundle_root"] = str(folder)
        net = parser.get_parsed_content("network_def", instantiate=True)
        load_checkpoint(net, str(folder / "models" / "model.pt"), modality=modality)
