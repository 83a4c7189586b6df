"""CT through `python -m monai.bundle run`: training, evaluation and inference on tiny CT
phantoms in HU, geometry kept, and the bad inputs of the CT configs."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, run_bundle, run_env

TINY = ["--features", "[4,4,8,8,16,4]"]
CT_TRAIN = ["--meta_file", "configs/metadata.json", "--config_file", "['configs/train.yaml','configs/train_ct.yaml']",
            "--logging_file", "configs/logging.conf"]
CT_EVAL = ["--meta_file", "configs/metadata.json",
           "--config_file", "['configs/train.yaml','configs/train_ct.yaml','configs/evaluate_ct.yaml']",
           "--logging_file", "configs/logging.conf"]
# an oblique-free but non-RAS affine (LPS, like DICOM-derived NIfTI) with anisotropic voxels
LPS_AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def ct_phantom(shape=(48, 48, 4), seed=0) -> np.ndarray:
    """Body ellipse of soft tissue in air, with bone, fat and a lung-like region, in HU."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    vol = np.full(shape, -1000.0, dtype=np.float32)
    for z in range(shape[2]):
        img = np.full(shape[:2], -1000.0)
        body = (x / 0.8) ** 2 + (y / 0.65) ** 2 < 1
        img[body] = 40.0
        img[body & ((x / 0.75) ** 2 + (y / 0.6) ** 2 > 0.8)] = -100.0  # fat rim
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        img[(x - cx) ** 2 + (y - cy) ** 2 < 0.02] = 900.0  # bone
        img[((x + 0.35) ** 2 + (y - 0.1) ** 2 < 0.05)] = -800.0  # lung
        vol[..., z] = img + rng.normal(0, 5, shape[:2])
    return vol


@pytest.fixture
def ct_dataset(tmp_path):
    d = tmp_path / "ct"
    d.mkdir()
    names = []
    for i in range(4):
        name = f"ct-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(ct_phantom(seed=i), LPS_AFFINE), str(d / name))
        names.append(name)
    datalist = {"training": [{"image": n} for n in names[:2]], "validation": [{"image": names[2]}],
                "test": [{"image": names[3]}]}
    (d / "datalist.json").write_text(json.dumps(datalist))
    return {"dataset_dir": str(d), "datalist": str(d / "datalist.json"), "names": names}



def ct_args(ds, tmp_path, **extra):
    args = ["--dataset_dir", ds["dataset_dir"], "--datalist", ds["datalist"], "--ckpt_dir", str(tmp_path / "models"),
            "--output_dir", str(tmp_path / "eval"), "--batch_size", "2", "--patch_size", "[32,32]",
            "--views", "24", "--full_views", "96", *TINY]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


def test_ct_train_two_iterations_evaluate_and_infer(ct_dataset, tmp_path):
    res = run_bundle("training", *CT_TRAIN, *ct_args(ct_dataset, tmp_path, max_epochs=1, epoch_length=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Epoch: 1/1, Iter: 2/2" in res.stdout + res.stderr
    assert (tmp_path / "models" / "model_ct.pt").is_file()
    assert list((tmp_path / "models").glob("last_ct_checkpoint_epoch=1.pt"))
    assert "fbp_ssim" in res.stdout + res.stderr

    # fine-tuning starts from given weights; a missing file is a one-line error
    res = run_bundle("training", *CT_TRAIN, *ct_args(ct_dataset, tmp_path / "ft", max_epochs=1, epoch_length=1),
                     "--pretrained", str(tmp_path / "models" / "model_ct.pt"))
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_bundle("training", *CT_TRAIN, *ct_args(ct_dataset, tmp_path / "ft", max_epochs=1, epoch_length=1),
                     "--pretrained", str(tmp_path / "nothing.pt"))
    assert res.returncode != 0 and "nothing.pt: file not found" in res.stderr and "Traceback" not in res.stderr

    res = run_bundle(*CT_EVAL, *ct_args(ct_dataset, tmp_path, eval_views="[24,12]"))
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"24", "12"}
    for setting in metrics.values():
        assert set(setting) == {"network", "fbp", "network_dc"}
        for m in ("ssim", "psnr", "nmse", "vif"):
            assert np.isfinite(setting["fbp"][m]["mean"]) and setting["network"][m]["n"] == 1
        # a noise-free scan: making the barely trained network's output agree with it helps
        assert setting["network_dc"]["psnr"]["mean"] > setting["network"]["psnr"]["mean"]
    # fewer views, more streaks: FBP is worse at 12 views than at 24
    assert metrics["12"]["fbp"]["psnr"]["mean"] < metrics["24"]["fbp"]["psnr"]["mean"]

    out = tmp_path / "inferred"
    res = run_bundle("--config_file", "configs/inference_ct.yaml", "--input_dir", ct_dataset["dataset_dir"],
                     "--output_dir", str(out), "--ckpt_path", str(tmp_path / "models" / "model_ct.pt"),
                     "--views", "24", "--full_views", "96", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reconstructing" in res.stderr  # progress bar
    for name in ct_dataset["names"]:
        stem = name[: -len(".nii.gz")]
        src = nib.load(f"{ct_dataset['dataset_dir']}/{name}")
        fbp = None
        for kind in ("recon", "fbp"):
            img = nib.load(str(out / f"{stem}_{kind}.nii.gz"))
            assert img.shape == src.shape
            np.testing.assert_allclose(img.affine, src.affine)
            np.testing.assert_allclose(img.header.get_zooms(), src.header.get_zooms())
            data = img.get_fdata()
            assert -1024.5 <= data.min() and data.max() <= 3071.5  # HU, in the window
            fbp = data if kind == "fbp" else fbp
        # FBP in HU lands near the truth: body ~40 HU, air -1000 HU (a 24-view scan of 48 pixels)
        ref = src.get_fdata()
        assert np.median(np.abs(fbp - ref)) < 60.0
    assert not list(out.glob(".tmp-*"))


def test_ct_inference_geometry_follows_the_input_orientation(tmp_path):
    # the same anatomy stored as RAS and as LPS gives the same reconstruction, voxel for voxel
    from bundle.inference import CTReconstructor, InferenceRunner
    from bundle.transforms.ct import CTAcquisition
    from bundle.networks import ResidualUNet

    vol = ct_phantom((40, 36, 2), seed=3)
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    lps = ras.copy()
    lps[:2] *= -1  # flip x and y
    lps[0, 3], lps[1, 3] = 0.8 * 39, 0.8 * 35
    nib.save(nib.Nifti1Image(vol, ras), str(tmp_path / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), lps), str(tmp_path / "lps.nii.gz"))
    torch.manual_seed(0)
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=False)
    recon = CTReconstructor(net, CTAcquisition(views=20, full_views=80), progress=False)
    InferenceRunner(recon, progress=False).run([str(tmp_path / "ras.nii.gz"), str(tmp_path / "lps.nii.gz")], str(tmp_path / "out"))
    a = nib.load(str(tmp_path / "out" / "ras_fbp.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "out" / "lps_fbp.nii.gz")).get_fdata()
    np.testing.assert_allclose(a, b[::-1, ::-1], atol=1e-3)


def tiny_checkpoint(tmp_path) -> str:
    from bundle.networks import ResidualUNet

    path = tmp_path / "tiny_ct.pt"
    torch.save(ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=False).state_dict(), path)
    return str(path)


def _write(path, data, affine=LPS_AFFINE):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))


@pytest.mark.parametrize("kind,message", [
    ("not HU", "not in Hounsfield units"),
    pytest.param("zero views", "the number of views must be at least 1", marks=pytest.mark.slow),
    ("too many views", "full acquisition has only 720"),
    pytest.param("negative dose", "incident photon count I0 must be positive", marks=pytest.mark.slow),
    pytest.param("unknown filter", "unknown FBP filter", marks=pytest.mark.slow),
])  # the slow cases: a process start each; the same checks run in-process in test_ct_physics
def test_ct_inference_bad_input_one_line_and_nothing_written(tmp_path, kind, message):
    inp = tmp_path / "in"
    inp.mkdir()
    _write(inp / "a.nii.gz", ct_phantom(seed=1))
    extra = []
    if kind == "not HU":
        _write(inp / "b.nii.gz", np.random.default_rng(0).random((48, 48, 4)))  # values in [0, 1]
    elif kind == "zero views":
        extra = ["--views", "0"]
    elif kind == "too many views":
        extra = ["--views", "1000"]
    elif kind == "negative dose":
        extra = ["--incident_photons", "-100"]
    elif kind == "unknown filter":
        extra = ["--fbp_filter", "triangle"]
    out = tmp_path / "out"
    res = run_bundle("--config_file", "configs/inference_ct.yaml", "--input_dir", str(inp), "--output_dir", str(out),
                     "--ckpt_path", tiny_checkpoint(tmp_path), *TINY, *extra)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert not out.exists() or not list(out.iterdir())


def test_ct_hu_check_warn_goes_on(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _write(inp / "b.nii.gz", np.random.default_rng(0).random((32, 32, 2)))
    out = tmp_path / "out"
    res = run_bundle("--config_file", "configs/inference_ct.yaml", "--input_dir", str(inp), "--output_dir", str(out),
                     "--hu_check", "warn", "--ckpt_path", tiny_checkpoint(tmp_path), "--views", "20", "--full_views", "80", *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "WARNING" in res.stdout + res.stderr and "not in Hounsfield units" in res.stdout + res.stderr
    assert (out / "b_recon.nii.gz").is_file() and (out / "b_fbp.nii.gz").is_file()


@pytest.mark.slow
def test_ct_figure_script_writes_a_windowed_panel(tmp_path):
    vol = tmp_path / "ct.nii.gz"
    _write(vol, ct_phantom((48, 48, 3), seed=2))
    out = tmp_path / "fig.png"
    cmd = [sys.executable, "scripts/studies/ct_figure.py", str(vol), "-o", str(out), "--ckpt", tiny_checkpoint(tmp_path),
           "--views", "24", "--full-views", "96", "--features", "4", "4", "8", "8", "16", "4",
           "--windows", "soft_tissue", "lung", "bone", "brain"]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "scripts/studies/ct_figure.py", str(tmp_path / "nope.nii.gz"), "-o", str(out)],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nope.nii.gz: file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_shipped_ct_model_beats_fbp_on_a_head_ct_from_another_source(tmp_path):
    """models/model_ct.pt via the CT evaluation config on the demo test split: a head CT slice from
    pydicom-data (CQ500), a source and anatomy never seen in training. Measured: +7.6 dB, +0.19 SSIM."""
    pytest.importorskip("pydicom.data")
    res = run_bundle(*CT_EVAL, "--output_dir", str(tmp_path), "--eval_views", "[60]")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())["60"]
    assert m["network"]["ssim"]["n"] == 1
    assert m["network"]["ssim"]["mean"] >= m["fbp"]["ssim"]["mean"] + 0.1
    assert m["network"]["psnr"]["mean"] >= m["fbp"]["psnr"]["mean"] + 5.0
    assert m["network_dc"]["psnr"]["mean"] >= m["network"]["psnr"]["mean"] + 0.5  # measured +0.9 dB


def test_ct_inference_from_a_given_sinogram(tmp_path):
    from bundle.inference import CTReconstructor, InferenceRunner
    from bundle.transforms.ct import CTAcquisition, hu_to_unit
    from bundle.errors import InputError
    from bundle.networks import ResidualUNet

    vol = ct_phantom((40, 36, 3), seed=4)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "in" / "a.nii.gz"))
    acq = CTAcquisition(views=20, full_views=80)
    unit = hu_to_unit(torch.from_numpy(np.moveaxis(vol, 2, 0)).float())
    sino, _ = acq.sinogram(unit, (0.8, 0.8))
    np.save(tmp_path / "in" / "a_sinogram.npy", sino.numpy())
    torch.manual_seed(0)
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=False, norm=None)
    InferenceRunner(CTReconstructor(net, acq, progress=False), progress=False).run(str(tmp_path / "in"), str(tmp_path / "given"))
    given = nib.load(str(tmp_path / "given" / "a_fbp.nii.gz")).get_fdata()
    (tmp_path / "in" / "a_sinogram.npy").unlink()
    InferenceRunner(CTReconstructor(net, acq, progress=False), progress=False).run(str(tmp_path / "in"), str(tmp_path / "sim"))
    simulated = nib.load(str(tmp_path / "sim" / "a_fbp.nii.gz")).get_fdata()
    np.testing.assert_allclose(given, simulated, atol=0.5)  # HU: the same noise-free scan
    np.save(tmp_path / "in" / "a_sinogram.npy", sino.numpy()[:, :-1])  # one view short
    with pytest.raises(InputError, match=r"a_sinogram.npy: sinogram of shape \(3, 19, \d+\) does not match"):
        InferenceRunner(CTReconstructor(net, acq, progress=False), progress=False).run(str(tmp_path / "in"), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_tune_ct_dc_script_reports_the_grid_on_the_validation_ct(tmp_path):
    cmd = [sys.executable, "scripts/studies/tune_ct_dc.py", "--step", "40", "--weights", "0.001,1000", "--iterations", "3"]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("totalseg_ct_cropped.nii.gz: 5 slices, 60/720 views, noise-free")

    def psnr(prefix):
        line = next(s for s in lines if s.startswith(prefix))
        return float(line.split("dB")[0].split()[-1])

    # a tiny weight follows the scan (better than the network alone); a huge one keeps the network
    assert psnr("weight 0.001:") > psnr("network") + 0.5
    assert abs(psnr("weight 1000:") - psnr("network")) < 0.05
    bad = subprocess.run([sys.executable, "scripts/studies/tune_ct_dc.py", "--model", str(tmp_path / "none.pt")], cwd=ROOT,
                         env=run_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "none.pt: file not found" in bad.stderr


def test_ct_cpu_slices_per_call_do_not_change_the_reconstruction():
    """The CT network sees a few slices per call on the CPU; the simulated low-dose scan (noise
    seeded per batch), the FBP and the reconstruction do not depend on it."""
    from bundle.inference import CTReconstructor, InferenceRunner
    from bundle.transforms.ct import CTAcquisition
    from bundle.errors import InputError
    from bundle.networks import ResidualUNet

    vol = ct_phantom((40, 36, 5), seed=1)
    torch.manual_seed(0)
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), norm=None, data_consistency=False)
    acq = CTAcquisition(views=20, full_views=80, incident_photons=1e4)
    outputs, calls = {}, {}
    for pixels in (40 * 36, 10**9):  # one slice per call, then the whole batch of 8
        rec = CTReconstructor(net, acq, batch_size=8, progress=False, cpu_batch_pixels=pixels)
        sizes = []
        hook = net.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
        try:
            outputs[pixels] = rec.reconstruct(vol, (1.0, 1.0, 1.0), "ct")
        finally:
            hook.remove()
        calls[pixels] = sizes
    assert calls == {40 * 36: [1] * 5, 10**9: [5]}
    np.testing.assert_array_equal(outputs[40 * 36]["fbp"], outputs[10**9]["fbp"])
    np.testing.assert_allclose(outputs[40 * 36]["recon"], outputs[10**9]["recon"], rtol=0, atol=1e-3)  # HU
    with pytest.raises(InputError, match="cpu_batch_pixels"):
        CTReconstructor(net, acq, cpu_batch_pixels=-1)


def test_ct_consistency_solves_several_batches_at_once():
    """Data consistency may solve the network outputs of several batches at once (the GPU
    default): the same reconstruction to float rounding, the same FBP, whole batches per solve;
    on the CPU by default each batch is solved as it comes."""
    from bundle.inference import CTReconstructor, InferenceRunner
    from bundle.transforms.ct import CTAcquisition, CTDataConsistency
    from bundle.errors import InputError
    from bundle.networks import ResidualUNet

    vol = ct_phantom((40, 36, 7), seed=2)
    torch.manual_seed(0)
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), norm=None, data_consistency=False)
    acq = CTAcquisition(views=20, full_views=80, incident_photons=1e4)

    class Recorder(CTDataConsistency):
        def __call__(self, image, sinogram, spacing):
            self.sizes.append(len(image))
            return super().__call__(image, sinogram, spacing)

    outputs, solves = {}, {}
    for per_solve in (None, 3, 100):
        dc = Recorder(acq, weight=1e-3, iterations=4)
        dc.sizes = []
        rec = CTReconstructor(net, acq, batch_size=2, progress=False, consistency=dc, consistency_batch=per_solve)
        outputs[per_solve] = rec.reconstruct(vol, (1.0, 1.0, 1.0), "ct")
        solves[per_solve] = dc.sizes
    assert solves == {None: [2, 2, 2, 1], 3: [4, 3], 100: [7]}
    for per_solve in (3, 100):
        np.testing.assert_array_equal(outputs[None]["fbp"], outputs[per_solve]["fbp"])
        np.testing.assert_allclose(outputs[None]["recon"], outputs[per_solve]["recon"], rtol=0, atol=0.05)  # HU (0.006 measured: float rounding)
    # the consistency step changed the network's output (so the comparison above means something)
    plain = CTReconstructor(net, acq, batch_size=2, progress=False).reconstruct(vol, (1.0, 1.0, 1.0), "ct")["recon"]
    assert np.abs(plain - outputs[None]["recon"]).max() > 1.0
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises(InputError, match="consistency_batch"):
            CTReconstructor(net, acq, consistency_batch=bad)
