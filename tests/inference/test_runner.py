"""The inference runner, with a stand-in reconstructor: every input checked before anything is
written, outputs back in each input's orientation, clear one-line errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import phantom_volume, write_nifti

from bundle.errors import InputError
from bundle.inference import InferenceRunner


class Identity:
    """A reconstructor that returns its RAS volume (and its spacing as a second output): the
    runner alone decides the outputs' orientation and geometry."""

    outputs = ("recon", "spacing")
    dicom_outputs = ("recon",)
    accepts_prospective = False

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def check(self, path, volume, spacing) -> dict:
        if volume.max() > 1e6:
            raise InputError(f"{path}: too bright")
        return {"extra": path}

    def reconstruct(self, volume, spacing, name, extra=None):
        self.seen.append((name, volume.shape, tuple(spacing), extra))
        return {"recon": np.asarray(volume) * 2, "spacing": np.broadcast_to(np.asarray(spacing)[0], volume.shape).copy()}


def oblique_affine():
    a = np.eye(4)
    a[:3, :3] = np.array([[0, 0, -1.5], [-2.0, 0, 0], [0, 2.5, 0]])
    return a


def test_outputs_in_the_input_orientation_and_ras_spacing(tmp_path):
    (tmp_path / "in").mkdir()
    vol = phantom_volume((12, 10, 6))
    write_nifti(tmp_path / "in" / "obl.nii.gz", vol, oblique_affine())
    rec = Identity()
    written = InferenceRunner(rec, progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["obl_recon.nii.gz", "obl_spacing.nii.gz"]
    out = nib.load(str(tmp_path / "out" / "obl_recon.nii.gz"))
    np.testing.assert_allclose(out.affine, oblique_affine())
    np.testing.assert_allclose(out.get_fdata(), vol * 2, rtol=1e-6)
    # RAS axes of this affine: x from the input's 3rd axis (1.5 mm), y from the 1st (2.0), z from the 2nd (2.5)
    name, shape, spacing, extra = rec.seen[0]
    assert name == "obl" and shape == (6, 12, 10) and spacing == (1.5, 2.0, 2.5) and extra.endswith("obl.nii.gz")


def test_every_input_is_checked_before_anything_is_written(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a_good.nii.gz", phantom_volume((8, 8, 4)))
    write_nifti(tmp_path / "in" / "b_bad.nii.gz", phantom_volume((8, 8, 4)) * 1e9)
    with pytest.raises(InputError, match="b_bad.nii.gz: too bright"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_one_name_are_refused(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "x.nii.gz", phantom_volume((8, 8, 4)))
    nib.save(nib.Nifti1Image(phantom_volume((8, 8, 4)), np.eye(4)), str(tmp_path / "in" / "x.nii"))
    with pytest.raises(InputError, match="same name"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", phantom_volume((8, 8, 4)))
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(InputError, match="output_dir .*: exists and is not a folder"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(InputError, match="cannot be created"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out" / "sub"))
