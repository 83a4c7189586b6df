import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import phantom_volume, write_nifti

from bundle.errors import InputError
from bundle.data.readers import list_inputs as find_volumes
from bundle.inference import InferenceRunner, MRIReconstructor
from bundle.networks import ResidualUNet


def reconstructor(**kwargs) -> MRIReconstructor:
    torch.manual_seed(0)
    return MRIReconstructor(ResidualUNet(features=(4, 4, 8, 8, 16, 4)), **kwargs)


def runner(rec: MRIReconstructor) -> InferenceRunner:
    return InferenceRunner(rec, progress=False)


def oblique_affine():
    # LPI-like axes order with a permutation and a rotation: the slicing must follow the anatomy
    rot = np.array([[0, 0, -1.5], [-2.0, 0, 0], [0, 2.5, 0]], dtype=float)
    a = np.eye(4)
    a[:3, :3] = rot
    a[:3, 3] = [10, -20, 5]
    return a


@pytest.mark.parametrize("affine", [None, "oblique"])
def test_outputs_keep_shape_affine_and_header(tmp_path, affine):
    affine = oblique_affine() if affine == "oblique" else np.diag([2.0, 2.0, 3.0, 1.0])
    src = write_nifti(tmp_path / "in" / "sub.nii.gz" if (tmp_path / "in").mkdir() is None else None,
                      phantom_volume((36, 40, 8)), affine)
    img = nib.load(str(src))
    img.header["descrip"] = b"test volume"
    nib.save(img, str(src))
    written = runner(reconstructor()).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert sorted(p.split("/")[-1] for p in written) == [
        "sub_mask.nii.gz", "sub_recon.nii.gz", "sub_zero_filled.nii.gz"]
    ref = nib.load(str(src))
    for path in written:
        out = nib.load(path)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine)
        assert out.header["descrip"] == ref.header["descrip"]
        assert np.isfinite(out.get_fdata()).all()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.split("/")[-1] for p in written)


def test_fully_sampled_zero_filled_equals_input_in_its_orientation(tmp_path):
    vol = phantom_volume((36, 40, 8))
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "sub.nii.gz", vol, oblique_affine())
    runner(reconstructor(acceleration=1)).run(str(tmp_path / "in"), str(tmp_path / "out"))
    zf = nib.load(str(tmp_path / "out" / "sub_zero_filled.nii.gz")).get_fdata()
    np.testing.assert_allclose(zf, vol, atol=1e-3 * vol.max())
    mask = nib.load(str(tmp_path / "out" / "sub_mask.nii.gz")).get_fdata()
    assert (mask == 1).all()


def test_mask_lines_follow_the_acceleration(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "sub.nii.gz", phantom_volume((36, 40, 8)))
    runner(reconstructor(acceleration=4)).run(str(tmp_path / "in"), str(tmp_path / "out"))
    mask = nib.load(str(tmp_path / "out" / "sub_mask.nii.gz")).get_fdata()
    # RAS input, axial slices (36 x 40): phase-encode lines along the second axis
    assert mask[:, :, 0].sum(axis=1).tolist() == [10] * 36


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("flat.nii.gz", np.ones((8, 8), np.float32), "expected a 3D volume, got shape \\(8, 8\\)"),
        ("t.nii.gz", np.ones((8, 8, 8, 2), np.float32), "expected a 3D volume, got shape \\(8, 8, 8, 2\\)"),
        ("nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32), "contains NaN"),
        ("corrupt.nii.gz", None, "cannot be read as NIfTI"),
    ],
)
def test_bad_volumes_stop_before_any_output(tmp_path, name, data, message):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "good.nii.gz", phantom_volume((36, 40, 8)))
    if data is None:
        (tmp_path / "in" / name).write_bytes(b"\x1f\x8b garbage")
    else:
        write_nifti(tmp_path / "in" / name, data)
    with pytest.raises(InputError, match=f"{name}: {message}"):
        runner(reconstructor()).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_options_and_folders(tmp_path):
    with pytest.raises(InputError, match="acceleration must be a number >= 1"):
        reconstructor(acceleration=0.5)
    with pytest.raises(InputError, match="unknown mask_type"):
        reconstructor(mask_type="radial")
    with pytest.raises(InputError, match="no such directory"):
        find_volumes(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no inputs"):
        find_volumes(str(tmp_path))


def test_inputs_from_a_datalist(tiny_dataset):
    from bundle.inference import resolve_inputs

    files = resolve_inputs(tiny_dataset["dataset_dir"], tiny_dataset["datalist"], "test")
    assert [f.split("/")[-1] for f in files] == [tiny_dataset["names"][4]]
    assert len(resolve_inputs(tiny_dataset["dataset_dir"])) == 5


def test_cpu_slices_per_call_follow_the_pixels_and_do_not_change_the_reconstruction():
    """On the CPU the network gets a few slices per call (faster there); accelerators keep the
    batch; the outputs do not depend on it."""
    from bundle.inference import SliceReconstructionInferer
    from bundle.inference.batching import slices_per_call

    assert slices_per_call(16, 256, 256, "cpu") == 2  # 2**17 pixels
    assert slices_per_call(16, 120, 120, "cpu") == 9
    assert slices_per_call(16, 512, 512, "cpu") == 1  # never fewer than one slice
    assert slices_per_call(4, 32, 32, "cpu") == 4  # never more than the batch
    assert slices_per_call(16, 512, 512, "cuda") == 16
    assert slices_per_call(16, 10, 10, "cpu", max_pixels=350) == 3
    vol = phantom_volume((40, 48, 7))
    outputs, calls = {}, {}
    for pixels in (40 * 48 * 2, 10**9):  # 2 slices per call, then the whole batch of 16
        rec = reconstructor(inferer=SliceReconstructionInferer(batch_size=16, cpu_batch_pixels=pixels))
        sizes = []
        hook = rec.network.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
        try:
            outputs[pixels] = rec.reconstruct(vol, None, "v")
        finally:
            hook.remove()
        calls[pixels] = sizes
    assert calls == {40 * 48 * 2: [2, 2, 2, 1], 10**9: [7]}
    small, whole = outputs[40 * 48 * 2], outputs[10**9]
    np.testing.assert_array_equal(small["mask"], whole["mask"])
    np.testing.assert_array_equal(small["zero_filled"], whole["zero_filled"])
    # float32 rounding only: the convolutions may pick other kernels for other batch sizes
    np.testing.assert_allclose(small["recon"], whole["recon"], rtol=0, atol=1e-5 * np.abs(whole["recon"]).max())
    with pytest.raises(InputError, match="cpu_batch_pixels"):
        SliceReconstructionInferer(cpu_batch_pixels=0)


def test_the_same_data_under_any_name_gets_the_same_masks_and_output(tmp_path):
    """Seeded by content (a hash of the volume) and the configured seed, never by the file name:
    two copies under different names reconstruct identically; another seed draws other masks."""
    (tmp_path / "in").mkdir()
    vol = phantom_volume((32, 48, 4), seed=9) * 7
    write_nifti(tmp_path / "in" / "first.nii.gz", vol)
    write_nifti(tmp_path / "in" / "upload_tmp8f3k.nii.gz", vol)
    InferenceRunner(MRIReconstructor(ResidualUNet(features=(4, 4, 8, 8, 16, 4)), mask_type="random"),
                    progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    out = {n: np.asarray(nib.load(str(tmp_path / "out" / f"{n}_{k}.nii.gz")).dataobj)
           for n in ("first", "upload_tmp8f3k") for k in ("recon", "mask")}
    np.testing.assert_array_equal(out["first"], out["upload_tmp8f3k"])
    from bundle.inference.mri import SliceReconstructionInferer

    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4))
    seeded = [MRIReconstructor(net, inferer=SliceReconstructionInferer(mask_type="random", seed=s)).reconstruct(vol, name="x")
              for s in (0, 1)]
    assert not np.array_equal(seeded[0]["mask"], seeded[1]["mask"])


def test_a_constant_volume_is_reconstructed_with_a_warning(tmp_path, caplog):
    rec = MRIReconstructor(ResidualUNet(features=(4, 4, 8, 8, 16, 4)))
    with caplog.at_level("WARNING"):
        rec.check("flat.nii.gz", np.full((32, 32, 4), 100.0, np.float32), (1.0, 1.0, 1.0))
    assert "flat.nii.gz: constant volume (every voxel 100)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        rec.check("head.nii.gz", phantom_volume((32, 32, 4)), (1.0, 1.0, 1.0))
    assert "constant volume" not in caplog.text
