"""Multi-coil MRI end to end through `python -m monai.bundle run`: a 2-iteration training of the
unrolled network on simulated coils, inference on raw files of every format (recognised by their
content), and each bad input stopping with one line before anything is written."""

from __future__ import annotations

import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, run_bundle

from bundle.data.fastmri import write_fastmri
from bundle.data.rawkspace import write_cfl

DEMO_PHANTOM = ROOT / "bundle" / "demo_data" / "multicoil" / "pulseq_phantom_32ch_64.h5"
TINY_NET = ["--multicoil_cascades", "1", "--multicoil_features", "[4,4,8,8,16,4]",
            "--multicoil_sens_features", "[2,2,4,4,8,2]"]
TRAIN = ["--meta_file", "configs/metadata.json", "--config_file", "['configs/train.yaml','configs/train_multicoil.yaml']",
         "--logging_file", "configs/logging.conf"]


def coil_kspace(coils=4, h=32, w=32, seed=0) -> np.ndarray:
    from test_varnet import acquisition

    return acquisition(coils, h, w, seed=seed)[0].numpy()


def infer(input_dir, out, ckpt, *extra, net=tuple(TINY_NET)):
    return run_bundle("--config_file", "configs/inference.yaml", "--input_dir", str(input_dir), "--output_dir", str(out),
                      "--multicoil_ckpt_path", str(ckpt), *net, *extra)


@pytest.fixture(scope="module")
def tiny_multicoil_model(tmp_path_factory):
    """Two training iterations on simulated coils (the demo-like tiny phantom volumes)."""
    from conftest import phantom_volume, write_nifti

    tmp = tmp_path_factory.mktemp("mc")
    data = tmp / "data"
    data.mkdir()
    names = []
    for i in range(3):
        write_nifti(data / f"s{i}.nii.gz", phantom_volume(seed=i))
        names.append(f"s{i}.nii.gz")
    (data / "list.json").write_text(json.dumps({"training": [{"image": names[0]}, {"image": names[1]}],
                                                "validation": [{"image": names[2]}], "test": [{"image": names[2]}]}))
    res = run_bundle("training", *TRAIN, "--dataset_dir", str(data), "--datalist", str(data / "list.json"),
                     "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"), "--max_epochs", "1",
                     "--epoch_length", "2", "--patch_size", "[32,32]", "--coils", "[2,6]", "--cascades", "1",
                     "--features", "[4,4,8,8,16,4]", "--sens_features", "[2,2,4,4,8,2]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Epoch: 1/1, Iter: 2/2" in res.stdout + res.stderr
    assert "zf_ssim" in res.stdout + res.stderr  # the zero-filled RSS baseline is validated beside it
    return tmp / "models" / "model_multicoil.pt"


def test_two_iteration_training_and_inference_on_every_format(tiny_multicoil_model, tmp_path):
    import ismrmrd  # noqa: F401  (the ISMRMRD writer of the reader tests)
    from data.test_rawkspace import write_ismrmrd

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DEMO_PHANTOM, inputs / "phantom.h5")                       # real 32-coil, fully sampled
    k = coil_kspace(coils=4, h=32, w=32)
    mask = np.zeros(32, bool)
    mask[::4] = True
    mask[14:18] = True
    write_fastmri(str(inputs / "prosp.h5"), (k * mask)[None], mask=mask)    # undersampled, with its mask
    write_cfl(str(inputs / "bart"), np.transpose(k, (1, 2, 0))[None])       # BART, fully sampled
    write_ismrmrd(inputs / "ismrmrd.h5", k[None], recon=(16, 32))           # ISMRMRD, crop to 16 x 32
    out = tmp_path / "out"
    res = infer(inputs, out, tiny_multicoil_model, "--write_maps", "true")
    assert res.returncode == 0, res.stderr[-3000:]
    shapes = {"phantom": (64, 64, 1), "prosp": (32, 32, 1), "bart": (32, 32, 1), "ismrmrd": (16, 32, 1)}
    for stem, shape in shapes.items():
        for kind in ("recon", "zero_filled"):
            img = nib.load(str(out / f"{stem}_{kind}.nii.gz"))
            assert img.shape == shape, (stem, kind)
            assert np.isfinite(img.get_fdata()).all()
        maps = nib.load(str(out / f"{stem}_maps.nii.gz"))
        assert maps.shape[:3] == shape and maps.get_data_dtype() == np.complex64
    # the prospective file is reconstructed as acquired: its mask is the file's, its zero-filled
    # image the RSS of the acquired coil data
    np.testing.assert_array_equal(nib.load(str(out / "prosp_mask.nii.gz")).get_fdata()[0, :, 0], mask)
    coil = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k * mask, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(nib.load(str(out / "prosp_zero_filled.nii.gz")).get_fdata()[..., 0],
                               np.sqrt((np.abs(coil) ** 2).sum(0)), rtol=1e-4, atol=1e-5)
    # the fully sampled phantom was undersampled retrospectively at 4x with fastMRI's centre
    m = nib.load(str(out / "phantom_mask.nii.gz")).get_fdata()[0, :, 0]
    assert m.sum() == 16 and m[30:35].all()  # round(0.08 * 64) = 5 centre lines
    # the recon is on the RSS scale of the data
    with h5py.File(DEMO_PHANTOM) as f:
        ref = f["reconstruction_rss"][0]
    recon = nib.load(str(out / "phantom_recon.nii.gz")).get_fdata()[..., 0]
    assert 0.3 < recon.max() / ref.max() < 3


def _bad_input(kind: str, folder):
    k = coil_kspace(coils=4, h=32, w=32)
    if kind == "single_coil":
        write_cfl(str(folder / "one"), np.transpose(k[:1], (1, 2, 0))[None])
        return "one.cfl", "single-coil k-space"
    if kind == "no_centre":
        mask = np.zeros(32, bool)
        mask[::3] = True
        mask[15:17] = False
        write_fastmri(str(folder / "nc.h5"), (k * mask)[None], mask=mask)
        return "nc.h5", "no fully sampled k-space centre"
    if kind == "mask_shape":
        write_fastmri(str(folder / "ms.h5"), k[None], mask=np.ones(31, bool))
        return "ms.h5", "'mask' has shape"
    if kind == "nan":
        k[0, 3, 3] = np.nan
        write_cfl(str(folder / "nan"), np.transpose(k, (1, 2, 0))[None])
        return "nan.cfl", "NaN"
    if kind == "zeros":
        write_cfl(str(folder / "zero"), np.zeros((1, 32, 32, 4), np.complex64))
        return "zero.cfl", "all zeros"
    if kind == "maps":
        write_cfl(str(folder / "mp"), np.transpose(k, (1, 2, 0))[None])
        write_cfl(str(folder / "mp_maps"), np.ones((1, 32, 32, 3), np.complex64))
        return "mp.cfl", "3 coils in the maps, 4 in the k-space"
    if kind == "truncated_h5":
        shutil.copy(DEMO_PHANTOM, folder / "cut.h5")
        data = (folder / "cut.h5").read_bytes()
        (folder / "cut.h5").write_bytes(data[: len(data) // 2])
        return "cut.h5", "cannot be read"
    write_cfl(str(folder / "cut"), np.transpose(k, (1, 2, 0))[None])  # truncated .cfl
    (folder / "cut.cfl").write_bytes((folder / "cut.cfl").read_bytes()[:100])
    return "cut.cfl", "bytes but the header"


@pytest.mark.parametrize("kind", ["single_coil", "no_centre", "mask_shape", "nan", "zeros", "maps", "truncated_h5",
                                  "truncated_cfl"])
def test_bad_multicoil_input_stops_with_one_line_and_writes_nothing(tmp_path, kind):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DEMO_PHANTOM, inputs / "good.h5")  # a good file first: nothing of it may be written either
    name, message = _bad_input(kind, inputs)
    out = tmp_path / "out"
    res = infer(inputs, out, ROOT / "models" / "model_multicoil.pt", net=())  # the shipped model
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and name in lines[0] and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_real_coil_dataset_and_augmentation_keep_the_physics():
    import torch

    from bundle.data import RawKspaceSlices
    from bundle.physics.mri import ifft2c
    from bundle.transforms import AugmentCoilKspaced

    ds = RawKspaceSlices([{"image": str(DEMO_PHANTOM)}], repeat=3)
    assert len(ds) == 3 and ds[0]["volume_max"] == 1.0 and ds[0]["image"].shape == (32, 64, 64)
    rss = ifft2c(ds[0]["image"]).abs().pow(2).sum(0).sqrt()
    assert abs(float(rss.max()) - 1.0) < 1e-5  # normalised by the RSS maximum
    aug = AugmentCoilKspaced(keys="image", flip_prob=1.0)
    aug.set_random_state(0)
    out = aug(ds[0])["image"]
    flipped = ifft2c(out).abs().pow(2).sum(0).sqrt()
    torch.testing.assert_close(flipped, rss.flip(-2, -1), atol=1e-5, rtol=1e-4)  # flips of the coil images
    torch.testing.assert_close(out.abs().pow(2).sum(), ds[0]["image"].abs().pow(2).sum(), rtol=1e-4, atol=0)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "kspace" / "multicoil").is_dir(),
                    reason="../shared/data/kspace/multicoil is not beside the repository")
def test_fine_tuning_on_real_coils_runs(tiny_multicoil_model, tmp_path):
    res = run_bundle("training", "--meta_file", "configs/metadata.json", "--config_file",
                     "['configs/train.yaml','configs/train_multicoil.yaml','configs/train_multicoil_real.yaml']",
                     "--logging_file", "configs/logging.conf", "--ckpt_dir", str(tmp_path / "m"),
                     "--output_dir", str(tmp_path / "e"), "--max_epochs", "1", "--epoch_length", "2",
                     "--pretrained", str(tiny_multicoil_model), "--cascades", "1", "--features", "[4,4,8,8,16,4]",
                     "--sens_features", "[2,2,4,4,8,2]", "--real_validation", "['pulseq_phantom_32ch_64.h5']",
                     "--oversampling", "[1, 2]")  # as the 0.16 candidate was trained (not shipped)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "val_ssim" in res.stdout + res.stderr and (tmp_path / "m" / "model_multicoil.pt").is_file()
