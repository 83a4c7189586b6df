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


def test_a_rerun_refuses_earlier_results_unless_overwrite_and_names_them(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", phantom_volume((16, 16, 4)))
    InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(InputError, match=r"holds earlier results that this run would replace \(a_recon.nii.gz, "
                                         r"a_spacing.nii.gz\); use --overwrite true"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    with caplog.at_level("WARNING"):
        InferenceRunner(Identity(), progress=False, overwrite=True).run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert "replacing 2 earlier output(s)" in caplog.text


def test_leftovers_of_an_interrupted_run_are_removed_and_incomplete_sets_redone(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        write_nifti(tmp_path / "in" / f"{name}.nii.gz", phantom_volume((16, 16, 4), seed=len(name)))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp-k1l2m3.nii.gz").write_bytes(b"")  # what a SIGKILL during a write leaves
    write_nifti(out / "a_recon.nii.gz", np.zeros((16, 16, 4), np.float32))  # a set without its second file
    with caplog.at_level("WARNING"):
        InferenceRunner(Identity(), progress=False).run(str(tmp_path / "in"), str(out))
    assert sorted(p.name for p in out.iterdir()) == ["a_recon.nii.gz", "a_spacing.nii.gz", "b_recon.nii.gz",
                                                     "b_spacing.nii.gz"]
    assert np.asarray(nib.load(str(out / "a_recon.nii.gz")).dataobj).max() > 0  # redone
    assert "left by an interrupted run" in caplog.text and "redoing the incomplete output sets" in caplog.text


def test_killed_inference_then_rerun_leaves_complete_sets(tmp_path):
    """SIGKILL `python -m monai.bundle run` (inference on three volumes) at random moments, then run
    it again: every volume ends with its complete set (_recon, _zero_filled, _mask), no temporary
    file is left, and a complete set is never silently replaced."""
    import os
    import random
    import signal
    import time

    from conftest import run_env
    from forked_cli import ForkedCLI

    (tmp_path / "in").mkdir()
    for i in range(3):
        write_nifti(tmp_path / "in" / f"v{i}.nii.gz", phantom_volume((96, 96, 24), seed=i))
    out = tmp_path / "out"
    argv = ["run", "--config_file", "configs/inference.yaml", "--input_dir", str(tmp_path / "in"), "--output_dir",
            str(out)]
    rng = random.Random(0)
    cli = ForkedCLI(env=run_env())
    try:
        for k in range(3):
            pid = cli.start(argv, str(tmp_path / f"o{k}"), str(tmp_path / f"e{k}"))
            time.sleep(rng.uniform(0.5, 3.0))
            os.kill(pid, signal.SIGKILL)
            cli.wait(pid)
        sets = [{f"v{i}_{k}.nii.gz" for k in ("recon", "zero_filled", "mask")} for i in range(3)]
        res = cli.run(argv)
        names = set(os.listdir(out))
        if res.returncode != 0:  # a complete set of the killed run is a result: refused, not replaced
            assert "holds earlier results" in res.stderr.strip().splitlines()[-1]
            assert names == set(os.listdir(out))
            res = cli.run([*argv, "--overwrite", "true"])
        assert res.returncode == 0, res.stderr[-2000:]
        names = set(os.listdir(out))
        assert not [n for n in names if n.startswith(".tmp-")], names
        assert names == set().union(*sets), names
    finally:
        cli.close()
