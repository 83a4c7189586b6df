"""PET through `python -m monai.bundle run --config_file configs/inference_pet.yaml`: activity maps
with and without a mu-map, a given sinogram, the real list-mode file; outputs in the input's
geometry and units with the total activity kept; every bad input stopping with one line before
anything is written; and a 2-iteration PET training run."""

from __future__ import annotations

from functools import partial

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHARED, run_bundle, run_inference, write_nifti

from bundle.physics.pet import pet_geometry

PET = SHARED / "pet"
# a non-RAS affine (L-P-S flips, 2 mm in-plane, 3 mm slices, an offset): the outputs must keep it
AFFINE = np.array([[-2.0, 0, 0, 60], [0, -2.0, 0, 50], [0, 0, 3.0, -10], [0, 0, 0, 1]])


def head_maps(n=48, slices=3):
    """(X, Y, Z) activity (grey-matter-like ring 4, white 1, a hot spot) and its mu-map."""
    c = np.arange(n) - (n - 1) / 2
    xx, yy = np.meshgrid(c, c, indexing="ij")
    r = np.sqrt(xx**2 + (yy / 1.2) ** 2)
    act = np.where(r < 18, 1.0, 0.0) + np.where((r > 12) & (r < 18), 3.0, 0.0)
    act[((xx - 5) ** 2 + yy**2) < 9] = 6.0
    mu = np.where(r < 20, 0.0096, 0.0)
    mu[(r >= 18) & (r < 20)] = 0.0172
    act = np.repeat(act[..., None], slices, -1).astype(np.float32)
    return act, np.repeat(mu[..., None], slices, -1).astype(np.float32)


def write(folder, name, data, affine=AFFINE):
    write_nifti(folder / name, data, affine)


infer = partial(run_inference, "configs/inference_pet.yaml")


def test_activity_maps_end_to_end(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    act, mu = head_maps()
    write(inputs, "head.nii.gz", act)
    write(inputs, "head_mu.nii.gz", mu)
    write(inputs, "nomu.nii.gz", act)  # no mu-map: a water-filled body outline
    out = tmp_path / "out"
    res = infer(inputs, out, "--count_fraction", "0.25")
    assert res.returncode == 0, res.stderr[-3000:]
    # the written baseline is OSEM as tuned on validation for 25 % (OSEM_BASELINE_BY_LEVEL)
    assert "head: OSEM baseline 10 iterations, 4 mm post-filter (count level 0.25)" in res.stdout + res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["head_osem.nii.gz", "head_recon.nii.gz",
                                                     "nomu_osem.nii.gz", "nomu_recon.nii.gz"]
    for name in ("head", "nomu"):
        recon, osem = nib.load(out / f"{name}_recon.nii.gz"), nib.load(out / f"{name}_osem.nii.gz")
        for img in (recon, osem):
            assert img.shape == act.shape
            np.testing.assert_allclose(img.affine, AFFINE)
        r, o = recon.get_fdata(), osem.get_fdata()
        assert r.min() >= 0 and np.isfinite(r).all()
        # in the input's units and place: totals within 6 % of the truth's, images aligned with it
        for x in (r, o):
            assert x.sum() == pytest.approx(act.sum(), rel=0.06)
            assert np.corrcoef(x.ravel(), act.ravel())[0, 1] > 0.85
    # the water outline stands in for the mu-map: attenuation corrected all the same
    a = nib.load(out / "head_osem.nii.gz").get_fdata()
    b = nib.load(out / "nomu_osem.nii.gz").get_fdata()
    assert a.sum() == pytest.approx(b.sum(), rel=0.06)


def map_with_mu(tmp_path, name: str):
    """tmp_path/in holding a 2-slice head map `name`.nii.gz and its mu-map; (folder, activity)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    act, mu = head_maps(slices=2)
    write(inputs, f"{name}.nii.gz", act)
    write(inputs, f"{name}_mu.nii.gz", mu)
    return inputs, act


def test_given_sinogram_and_its_shape(tmp_path):
    inputs, act = map_with_mu(tmp_path, "s")
    geom = pet_geometry((48, 48), 2.0, 96)
    rng = np.random.default_rng(0)
    sino = rng.poisson(20.0, size=(2, *geom.sinogram_shape)).astype(np.float32)
    np.save(inputs / "s_sinogram.npy", sino[:, :, :-1])  # one bin short
    out = tmp_path / "out"
    res = infer(inputs, out)
    assert res.returncode != 0 and "s_sinogram.npy" in res.stderr and "shape" in res.stderr
    assert not out.exists() or not any(out.iterdir())
    # a sinogram of this geometry: projected activity with Poisson noise
    from bundle.physics.ct import ParallelBeamProjector

    proj = ParallelBeamProjector(geom)
    slices = torch.from_numpy(np.ascontiguousarray(act.transpose(2, 1, 0)))
    # the slices in RAS order: the volume is L-P-S, so RAS flips the first two axes
    ras = torch.flip(slices, dims=(1, 2))
    mean = proj.A(ras) * 5.0
    np.save(inputs / "s_sinogram.npy", rng.poisson(mean.numpy()).astype(np.float32))
    res = infer(inputs, out)
    assert res.returncode == 0, res.stderr[-3000:]
    o = nib.load(out / "s_osem.nii.gz").get_fdata()
    assert np.corrcoef(o.ravel(), act.ravel())[0, 1] > 0.8


def bad_case(folder, case):
    act, mu = head_maps(slices=2)
    extra = []
    if case == "negative":
        act[3, 3, 0] = -1.0
    if case == "nan":
        act[3, 3, 0] = np.nan
    write(folder, "a.nii.gz", act)
    if case == "mu_shape":
        write(folder, "a_mu.nii.gz", mu[:-1])
    elif case == "mu_affine":
        aff = AFFINE.copy()
        aff[0, 3] += 4
        write(folder, "a_mu.nii.gz", mu, aff)
    elif case == "mu_range":
        write(folder, "a_mu.nii.gz", mu * 10)
    else:
        write(folder, "a_mu.nii.gz", mu)
    if case == "fraction":
        extra = ["--count_fraction", "0"]
    if case == "ensemble":
        extra = ["--pet_self_ensemble", "maybe"]
    if case == "listmode":
        (folder / "b.l").write_bytes(b"\x00" * 64)  # a list file without an Interfile header
    return extra


@pytest.mark.parametrize("case, match", [
    ("negative", "negative activity"), ("nan", "NaN"), ("mu_shape", "shape"), ("mu_affine", "affine"),
    ("mu_range", "outside"), ("fraction", "count_fraction"), ("listmode", "unknown format"),
    ("ensemble", "pet_self_ensemble"),
])
def test_bad_inputs_stop_with_one_line_before_any_write(tmp_path, case, match):
    inputs = tmp_path / "in"
    inputs.mkdir()
    # a good map first: nothing of it may be written either
    act, mu = head_maps(slices=2)
    write(inputs, "0good.nii.gz", act)
    extra = bad_case(inputs, case)
    out = tmp_path / "out"
    res = infer(inputs, out, *extra)
    assert res.returncode != 0
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith("error: ") and match in lines[-1], lines[-1]
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(not (PET / "small_listmode_file.l").is_file(), reason="../shared/data/pet is not here")
def test_real_listmode_smoke(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in PET.iterdir():
        (inputs / f.name).symlink_to(f)
    out = tmp_path / "out"
    res = infer(inputs, out)
    assert res.returncode == 0, res.stderr[-3000:]
    recon = nib.load(out / "PET_ACQ_small_recon.nii.gz")
    osem = nib.load(out / "PET_ACQ_small_osem.nii.gz")
    assert recon.shape == osem.shape == (160, 160, 1)
    r, o = recon.get_fdata(), osem.get_fdata()
    assert np.isfinite(r).all() and r.min() >= 0 and o.max() > 0
    # the head sits near the centre: most of the activity within 100 mm of it
    c = (np.arange(160) - 79.5) * 2.0
    xx, yy = np.meshgrid(c, c, indexing="ij")
    inner = (xx**2 + yy**2) < 100**2
    assert o[..., 0][inner].sum() > 0.8 * o.sum()


def test_two_iteration_training_then_inference(tmp_path):
    ckpt = tmp_path / "models"
    res = run_bundle("training", "--meta_file", "configs/metadata.json", "--config_file",
                     "['configs/train.yaml','configs/train_pet.yaml']", "--logging_file", "configs/logging.conf",
                     "--max_epochs", "1", "--epoch_length", "2", "--batch_size", "2", "--val_batch_size", "16",
                     "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path / "eval"), "--lesion_weight", "10",
                     timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (ckpt / "model_pet.pt").is_file()
    log = res.stderr + res.stdout
    assert "osem_psnr" in log and "val_psnr" in log  # the network beside the OSEM baseline
    inputs = tmp_path / "in"
    inputs.mkdir()
    act, mu = head_maps(slices=1)
    write(inputs, "h.nii.gz", act)
    out = tmp_path / "out"
    res = infer(inputs, out, "--ckpt_path", str(ckpt / "model_pet.pt"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "h_recon.nii.gz").is_file() and (out / "h_osem.nii.gz").is_file()
    # the evaluation overlay: network and OSEM rows per count fraction, here on the one validation
    # subject (the default split, test, has two: twice the time of the default suite's longest test)
    res = run_bundle("evaluating", "--meta_file", "configs/metadata.json", "--config_file",
                     "['configs/train.yaml','configs/train_pet.yaml','configs/evaluate_pet.yaml']",
                     "--logging_file", "configs/logging.conf", "--ckpt_dir", str(ckpt), "--eval_fractions", "[0.1]",
                     "--eval_split", "validation", "--val_batch_size", "16", "--output_dir", str(tmp_path / "evaluation"),
                     timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert set(metrics["0.1"]) == {"osem", "osem_input", "network"} and metrics["0.1"]["osem"]["psnr"]["n"] == 1
    # "osem" is the post-filtered OSEM tuned for 10 %, less noisy than the network's unfiltered input
    assert metrics["0.1"]["osem"]["psnr"]["mean"] > metrics["0.1"]["osem_input"]["psnr"]["mean"] + 0.2  # 20.89 vs 20.46


def _guided_checkpoint(path, features=(16, 16, 32, 64, 128, 16)):
    from bundle.networks import ResidualUNet, with_metadata

    torch.manual_seed(0)
    net = ResidualUNet(features=features, norm="batch", data_consistency=False, guide_channels=1)
    torch.save(with_metadata(net.state_dict(), {"modality": "pet", "architecture": net.architecture()}), path)
    return net


def test_mr_guided_model_reads_the_t1_beside_each_map(tmp_path):
    inputs, act = map_with_mu(tmp_path, "head")
    write(inputs, "head_mr.nii.gz", (500 + 300 * (act > 2)).astype(np.float32))  # a T1-like image on the same grid
    ckpt = tmp_path / "mr.pt"
    _guided_checkpoint(ckpt)
    out = tmp_path / "out"
    res = infer(inputs, out, "--pet_anatomy", "true", "--ckpt_path", str(ckpt))
    assert res.returncode == 0, res.stderr[-3000:]
    # the T1 and mu-map are inputs of the map, not inputs of their own
    assert sorted(p.name for p in out.iterdir()) == ["head_osem.nii.gz", "head_recon.nii.gz"]
    recon = nib.load(out / "head_recon.nii.gz")
    assert recon.shape == act.shape and np.allclose(recon.affine, AFFINE) and np.isfinite(recon.get_fdata()).all()
    # a map without its T1: one line naming it, nothing written
    write(inputs, "other.nii.gz", act)
    out2 = tmp_path / "out2"
    res = infer(inputs, out2, "--pet_anatomy", "true", "--ckpt_path", str(ckpt))
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "other.nii.gz" in lines[-1] and "_mr.nii.gz" in lines[-1], lines[-1]
    assert not out2.exists() or not any(out2.iterdir())


def test_mr_guided_reconstructor_checks_the_t1_and_uses_it(tmp_path):
    from bundle.errors import InputError
    from bundle.inference.pet import PETReconstructor
    from bundle.transforms.pet import PETAcquisition

    net = _guided_checkpoint(tmp_path / "unused.pt", features=(4, 4, 8, 8, 16, 4))
    rec = PETReconstructor(net, PETAcquisition(views=16, iterations=1, subsets=2), progress=False)
    act, mu = head_maps(n=32, slices=1)
    write(tmp_path, "a.nii.gz", act)
    write(tmp_path, "a_mu.nii.gz", mu)
    with pytest.raises(InputError, match="a.nii.gz: the MR-guided PET model needs its co-registered T1"):
        rec.check(str(tmp_path / "a.nii.gz"), act, (2.0, 2.0, 3.0))
    write(tmp_path, "a_mr.nii.gz", np.ones((32, 31, 1), np.float32))
    with pytest.raises(InputError, match="a_mr.nii.gz: T1 of shape"):
        rec.check(str(tmp_path / "a.nii.gz"), act, (2.0, 2.0, 3.0))
    shifted = AFFINE.copy()
    shifted[1, 3] += 2
    write(tmp_path, "a_mr.nii.gz", act + 1, shifted)
    with pytest.raises(InputError, match="affine"):
        rec.check(str(tmp_path / "a.nii.gz"), act, (2.0, 2.0, 3.0))
    write(tmp_path, "a_mr.nii.gz", np.zeros_like(act))
    with pytest.raises(InputError, match="a_mr.nii.gz: an anatomical MR image must be finite and not empty"):
        rec.check(str(tmp_path / "a.nii.gz"), act, (2.0, 2.0, 3.0))
    with pytest.raises(InputError, match="carries no T1"):
        rec.read_scan(str(tmp_path / "x.l.hdr"))
    write(tmp_path, "a_mr.nii.gz", act + 1)
    extra = rec.check(str(tmp_path / "a.nii.gz"), act, (2.0, 2.0, 3.0))
    np.testing.assert_allclose(extra["mr"], np.flip(act + 1, (0, 1)))  # in RAS, as the runner gives the activity
    one = rec.reconstruct(act, (2.0, 2.0, 3.0), "a", extra["mu"], mr=extra["mr"])["recon"]
    two = rec.reconstruct(act, (2.0, 2.0, 3.0), "a", extra["mu"], mr=np.flip(extra["mr"], 0).copy())["recon"]
    assert one.shape == act.shape and not np.allclose(one, two)  # the T1 guides the network


def test_mr_guided_weights_are_not_shipped_and_the_error_says_how_to_make_them(tmp_path):
    from bundle.errors import InputError
    from bundle.inference.pet import pet_weights

    assert pet_weights(str(tmp_path), False) == str(tmp_path / "models" / "model_pet.pt")
    with pytest.raises(InputError, match=r"pet_anatomy: .*model_pet_mr.pt does not ship .*train_pet_mr.yaml .*--ckpt_path"):
        pet_weights(str(tmp_path), "true")
    with pytest.raises(InputError, match="pet_anatomy"):
        pet_weights(str(tmp_path), "maybe")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model_pet_mr.pt").write_bytes(b"")
    assert pet_weights(str(tmp_path), True) == str(tmp_path / "models" / "model_pet_mr.pt")


def test_the_reconstruction_grid_by_hand():
    """Maps of other pixels go onto the field of view in 2 mm pixels (rounded); 2 mm maps and
    `recon_pixel_mm` None keep theirs; an option out of range is refused."""
    from bundle.errors import InputError
    from bundle.inference.pet import PETReconstructor
    from bundle.transforms.pet import PETAcquisition

    rec = PETReconstructor(torch.nn.Identity(), PETAcquisition(views=16), progress=False)
    assert rec.recon_grid((90, 120), 2.0) == ((90, 120), 2.0)
    assert rec.recon_grid((180, 240), 1.0) == ((90, 120), 2.0)
    assert rec.recon_grid((100, 64), 3.0) == ((150, 96), 2.0)
    assert rec.recon_grid((181, 218), 1.0) == ((90, 109), 2.0)  # 90.5 rounds to even
    for word in (None, "null", "None", "native"):
        native = PETReconstructor(torch.nn.Identity(), PETAcquisition(views=16), progress=False, recon_pixel_mm=word)
        assert native.recon_grid((180, 240), 1.0) == ((180, 240), 1.0)
    assert PETReconstructor(torch.nn.Identity(), PETAcquisition(views=16), recon_pixel_mm="2.5").recon_pixel_mm == 2.5
    for bad in (0, -2.0, 50, "abc", float("nan"), True):
        with pytest.raises(InputError, match="recon_pixel_mm"):
            PETReconstructor(torch.nn.Identity(), PETAcquisition(views=16), recon_pixel_mm=bad)


def test_back_to_the_input_grid_keeps_each_slice_activity_integral():
    """Upsampling 2 mm slices onto a 1 mm grid: each slice's sum x pixel area is the 2 mm slice's
    (a quarter of the sum per fine pixel), a uniform slice stays uniform at the same value, and
    resampling 1 mm slices made of 2 x 2 blocks to 2 mm keeps their mean."""
    from bundle.inference.pet import PETReconstructor
    from bundle.transforms.pet import PETAcquisition

    rec = PETReconstructor(torch.nn.Identity(), PETAcquisition(views=16), progress=False)
    coarse = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    coarse[1] = 2.5
    fine = rec.back_to_input(coarse, (40, 60))
    assert fine.shape == (3, 40, 60)
    torch.testing.assert_close(fine.sum((-2, -1)) / 4, coarse.sum((-2, -1)))
    torch.testing.assert_close(fine[1], torch.full((40, 60), 2.5))
    blocks = coarse.repeat_interleave(2, -2).repeat_interleave(2, -1)
    torch.testing.assert_close(rec.resample(blocks, (20, 30)).mean((-2, -1)), coarse.mean((-2, -1)), rtol=1e-4, atol=0)


def test_a_1_mm_map_is_reconstructed_on_2_mm_and_written_on_its_own_grid(tmp_path):
    """A 1 mm map (the 2 mm test head, each pixel 2 x 2): outputs on the 1 mm grid, their total
    activity that of the same head given at 2 mm within the noise, and a given sinogram expected on
    the 2 mm reconstruction grid's geometry (the error says so)."""
    from bundle.errors import InputError
    from bundle.inference.pet import PETReconstructor
    from bundle.transforms.pet import PETAcquisition

    rec = PETReconstructor(torch.nn.Identity(), PETAcquisition(views=32, iterations=2, subsets=4), progress=False,
                           em_iterations=0)
    act, mu = head_maps(n=32, slices=2)
    fine_act = act.repeat(2, 0).repeat(2, 1)
    fine_mu = mu.repeat(2, 0).repeat(2, 1)
    coarse = rec.reconstruct(act, (2.0, 2.0, 3.0), "c", mu)
    fine = rec.reconstruct(fine_act, (1.0, 1.0, 3.0), "f", fine_mu)
    for k in ("recon", "osem"):
        assert fine[k].shape == fine_act.shape and np.isfinite(fine[k]).all() and fine[k].min() >= 0
        ratio = fine[k].sum((0, 1)) / 4 / coarse[k].sum((0, 1))  # per slice, in 2 mm pixels
        np.testing.assert_allclose(ratio, 1.0, atol=0.03)
    write(tmp_path, "f.nii.gz", fine_act, np.diag([1.0, 1.0, 3.0, 1.0]))
    views, bins = pet_geometry((32, 32), 2.0, 32).sinogram_shape
    np.save(tmp_path / "f_sinogram.npy", np.ones((2, views, bins), np.float32))
    assert rec.check(str(tmp_path / "f.nii.gz"), fine_act, (1.0, 1.0, 3.0))["sinogram"].shape == (2, views, bins)
    np.save(tmp_path / "f_sinogram.npy", np.ones((2, *pet_geometry((64, 64), 1.0, 32).sinogram_shape), np.float32))
    with pytest.raises(InputError, match="32 x 32 pixels of 2 mm"):
        rec.check(str(tmp_path / "f.nii.gz"), fine_act, (1.0, 1.0, 3.0))


def test_self_ensemble_is_the_mean_over_the_eight_symmetries_by_hand():
    from bundle.inference.pet import dihedral_mean

    x = torch.randn(2, 1, 6, 6)
    # an equivariant map is its own self-ensemble
    torch.testing.assert_close(dihedral_mean(lambda t: 2 * t + 1, x), 2 * x + 1)
    # adding a column ramp j (not symmetric): mapped back, the 8 ramps are j, 5 - j, i and 5 - i
    # twice each, whose mean is 2.5 on every pixel of a 6 x 6 slice
    ramp = torch.arange(6.0).expand(6, 6)
    torch.testing.assert_close(dihedral_mean(lambda t: t + ramp, x), x + 2.5)
