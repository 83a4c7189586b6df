"""The io helpers: atomic writing (the one temp-file-and-rename of the package) and the checked
NIfTI reading and writing."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.io import atomic_output, load_nifti_volume, save_nifti_like, write_text_atomic
from bundle.errors import InputError


def test_atomic_output_renames_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(str(target), ".txt") as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and tmp.endswith(".txt") and not target.exists()
        with open(tmp, "w") as f:
            f.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="disk gone"), atomic_output(str(target), ".txt") as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "first"  # the previous file, not a truncated one
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary file left
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


def test_write_text_atomic_replaces(tmp_path):
    path = tmp_path / "a.md"
    write_text_atomic(str(path), "x\n")
    write_text_atomic(str(path), "y\n")
    assert path.read_text() == "y\n" and len(list(tmp_path.iterdir())) == 1


def test_nifti_round_trip_keeps_affine_and_header(tmp_path):
    affine = np.array([[0, 0, -1.5, 10], [-2.0, 0, 0, -20], [0, 2.5, 0, 5], [0, 0, 0, 1]])
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    src = nib.Nifti1Image(data.astype(np.int16), affine)
    src.header["descrip"] = b"source"
    nib.save(src, str(tmp_path / "in.nii.gz"))
    img, loaded = load_nifti_volume(str(tmp_path / "in.nii.gz"))
    assert loaded.dtype == np.float32 and np.array_equal(loaded, data)
    save_nifti_like(loaded * 2, img, str(tmp_path / "out.nii.gz"))
    out = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert out.header["descrip"] == b"source" and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.get_fdata(), data * 2)
    with pytest.raises(ValueError, match="differs from the reference"):
        save_nifti_like(loaded[:1], img, str(tmp_path / "bad.nii.gz"))
    assert not (tmp_path / "bad.nii.gz").exists()


@pytest.mark.parametrize("case,message", [
    ("missing", "file not found"), ("not nifti", "not a NIfTI file"), ("corrupt", "cannot be read as NIfTI"),
    ("4d", "4D volumes"), ("nan", "NaN or infinite"),
])
def test_bad_nifti_inputs_are_one_line_errors_naming_the_file(tmp_path, case, message):
    path = tmp_path / ("x.txt" if case == "not nifti" else "x.nii.gz")
    if case == "not nifti":
        path.write_text("hello")
    elif case == "corrupt":
        path.write_bytes(gzip.compress(b"\0" * 100))
    elif case == "4d":
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)), str(path))
    elif case == "nan":
        nib.save(nib.Nifti1Image(np.full((2, 2, 2), np.nan, np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match=message) as err:
        load_nifti_volume(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_atomic_output_of_a_folder(tmp_path):
    target = tmp_path / "series"
    with pytest.raises(RuntimeError), atomic_output(str(target), "-dicom", folder=True) as tmp:
        (Path(tmp) / "0001.dcm").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, nothing left
    target.mkdir()  # an empty folder may be replaced
    with atomic_output(str(target), "-dicom", folder=True) as tmp:
        (Path(tmp) / "0001.dcm").write_bytes(b"x")
    assert [p.name for p in target.iterdir()] == ["0001.dcm"] and list(tmp_path.iterdir()) == [target]
