"""DICOM series in and out: geometry, HU values, series selection and bad folders, with files written
by pydicom and the real DICOM that ships in pip packages and in ../shared."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import SHARED
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, generate_uid

from bundle.data.dicom import find_series, read_dicom_series, write_dicom_series
from bundle.errors import InputError
from bundle.data.io import read_dicom_slice
from bundle.data.readers import list_inputs, load_input

CT_SERIES = SHARED / "ct" / "dicom_example_ct"


def write_series(folder: Path, volume: np.ndarray, spacing=(0.8, 0.7), positions=None, modality="CT",
                 iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), series_uid=None, origin=(10.0, -20.0, 30.0)) -> list[Path]:
    """A series of (columns, rows, slices) `volume` (stored values = value + 1024, intercept -1024),
    by default sagittal (rows along -z, columns along +y) with slices along the normal (+x)."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    n = volume.shape[2]
    depths = [2.5 * k for k in range(n)] if positions is None else positions
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", "Test^Patient", study, series_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, n - k  # reversed numbering: sort by position
        ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(origin) + normal * depths[k]]
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.SliceThickness = "2.5"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = (volume[:, :, k].T + 1024).astype("<u2").tobytes()
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def test_series_geometry_and_values_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 2000, size=(24, 20, 6)).astype(np.float32)
    order = [3, 0, 5, 1, 4, 2]  # files written out of order
    write_series(tmp_path / "in", vol[:, :, order], positions=[2.5 * k for k in order])
    img, series = read_dicom_series(str(tmp_path / "in"))
    np.testing.assert_array_equal(np.asarray(img), vol)  # sorted by position, HU after the intercept
    # the affine by hand: LPS row direction (0,1,0) x 0.7 mm (column spacing), column direction
    # (0,0,-1) x 0.8 mm, slices along the normal row x col = (-1,0,0) every 2.5 mm; RAS flips x, y
    expected = np.array([
        [0.0, 0.0, 2.5, -10.0],
        [-0.7, 0.0, 0.0, 20.0],
        [0.0, -0.8, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    np.testing.assert_allclose(series.affine(), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(img.affine), expected, atol=1e-4)  # ITKReader agrees

    out = tmp_path / "out"
    written = write_dicom_series(np.asarray(img) * 0.5, series, str(out), description="test")
    assert len(written) == 6
    back, back_series = read_dicom_series(str(out))
    np.testing.assert_allclose(np.asarray(back), vol * 0.5, atol=0.05)
    np.testing.assert_allclose(np.asarray(back.affine), expected, atol=1e-4)
    ds = pydicom.dcmread(written[0])
    src = series.headers[0]
    assert ds.SeriesInstanceUID != series.uid and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == "P1"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert "PatientBirthDate" not in ds  # nothing invented
    with pytest.raises(InputError, match="not empty"):
        write_dicom_series(np.asarray(img), series, str(out))


def test_nifti_from_dicom_keeps_the_affine(tmp_path):
    vol = np.random.default_rng(1).integers(-500, 500, size=(16, 18, 4)).astype(np.float32)
    write_series(tmp_path / "s", vol)
    item = load_input(str(tmp_path / "s"))
    np.testing.assert_allclose(item.reference.affine, find_series(str(tmp_path / "s")).affine(), atol=1e-4)
    assert list_inputs(str(tmp_path)) == [str(tmp_path / "s")]


def test_bad_dicom_folders(tmp_path):
    vol = np.zeros((8, 8, 4), dtype=np.float32)
    # two series in one folder: ambiguous, unless one is chosen
    write_series(tmp_path / "mixed", vol, series_uid="1.2.3.4")
    write_series(tmp_path / "mixed2", vol, series_uid="1.2.3.5")
    for f in (tmp_path / "mixed2").iterdir():
        shutil.move(str(f), str(tmp_path / "mixed" / ("b_" + f.name)))
    with pytest.raises(InputError, match=r"mixed: holds 2 series; choose one with series_uid.*1\.2\.3\.4.*1\.2\.3\.5"):
        find_series(str(tmp_path / "mixed"))
    assert len(find_series(str(tmp_path / "mixed"), "1.2.3.5").files) == 4
    # a missing slice: uneven spacing
    write_series(tmp_path / "gap", vol, positions=[0.0, 2.5, 7.5, 10.0])
    with pytest.raises(InputError, match="gap: uneven slice spacing"):
        read_dicom_series(str(tmp_path / "gap"))
    # no pixel data
    paths = write_series(tmp_path / "nopix", vol)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    with pytest.raises(InputError, match=r"slice_001.dcm: no pixel data"):
        read_dicom_series(str(tmp_path / "nopix"))
    # a compressed transfer syntax nothing here decodes
    paths = write_series(tmp_path / "htj2k", vol)
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([ds.PixelData])  # the bytes do not matter: the syntax is refused first
    ds.save_as(paths[0], enforce_file_format=True)
    with pytest.raises(InputError, match=r"slice_000.dcm: transfer syntax High-Throughput JPEG 2000.*cannot be decoded"):
        read_dicom_series(str(tmp_path / "htj2k"))
    # no DICOM at all, a corrupt file
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        find_series(str(tmp_path / "empty"))
    paths = write_series(tmp_path / "corrupt", vol)
    paths[2].write_bytes(paths[2].read_bytes()[:400])
    with pytest.raises(InputError, match="slice_002.dcm"):
        read_dicom_series(str(tmp_path / "corrupt"))


def test_pip_shipped_dicom_loads_in_hu(tmp_path):
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    folder = tmp_path / "ct_small"
    folder.mkdir()
    shutil.copy(path, folder)
    img, series = read_dicom_series(str(folder))
    _, hu = read_dicom_slice(path)  # pydicom: stored value * slope + intercept
    np.testing.assert_allclose(np.asarray(img)[:, :, 0], hu.T, atol=1e-3)
    assert -1100 < float(img.min()) < -800 and float(img.max()) > 500  # air and bone in HU


def test_pydicom_data_head_ct_slice_in_hu(tmp_path):
    from bundle.data.demo import dicom_slice_to_nifti

    path = pydicom.data.get_testdata_file("693_UNCR.dcm")  # from the pydicom-data package
    folder = tmp_path / "head"
    folder.mkdir()
    shutil.copy(path, folder)
    img, series = read_dicom_series(str(folder))
    _, hu = read_dicom_slice(path)
    np.testing.assert_allclose(np.asarray(img)[:, :, 0], hu.T, atol=1e-3)
    assert float(img.min()) <= -1000 and float(img.max()) > 1000
    # the one-slice NIfTI conversion of the CT demo has the same affine
    nii = nib.load(dicom_slice_to_nifti(path, str(tmp_path / "head.nii.gz")))
    np.testing.assert_allclose(nii.affine, series.affine(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(img.affine), series.affine(), atol=1e-4)


@pytest.mark.skipif(not CT_SERIES.is_dir(), reason="../shared/data/ct/dicom_example_ct not present")
def test_shared_ct_series(tmp_path):
    img, series = read_dicom_series(str(CT_SERIES))
    assert img.shape == (512, 512, 20)
    np.testing.assert_allclose(np.asarray(img.affine), series.affine(), atol=1e-4)
    first = pydicom.dcmread(series.files[0])
    hu = first.pixel_array.astype(np.float64) * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_allclose(np.asarray(img)[:, :, 0], hu.T, atol=1e-3)  # JPEG 2000, decoded by GDCM
    # DICOM -> NIfTI through inference's loader: same world coordinates for voxel (i, j, k)
    item = load_input(str(CT_SERIES))
    ipp_last = np.array([float(v) for v in series.headers[-1].ImagePositionPatient])
    world = item.reference.affine @ np.array([0, 0, 19, 1.0])
    np.testing.assert_allclose(world[:3], ipp_last * [-1, -1, 1], atol=1e-3)


@pytest.mark.skipif(not (SHARED / "dicom_mr").is_dir(), reason="../shared/data/dicom_mr not present")
def test_shared_mr_slices(tmp_path):
    item = load_input(str(SHARED / "dicom_mr"))
    assert item.data.shape[:2] == (512, 512) and item.data.shape[2] == 3
    assert item.data.max() > 0
    affine = find_series(str(SHARED / "dicom_mr")).affine()
    np.testing.assert_allclose(item.reference.affine, affine, atol=1e-4)
    nib.Nifti1Image(item.data, item.reference.affine)  # a valid NIfTI geometry


def test_dicom_series_through_the_bundle(tmp_path):
    """A CT series in, NIfTI and a derived DICOM series out, through `python -m monai.bundle run`;
    a folder with two series stops with one line and writes nothing."""
    from conftest import phantom_volume, run_bundle

    phantom = phantom_volume((64, 64, 3), seed=2)
    hu = np.where(phantom > 0, phantom * 2.0, -1000.0).astype(np.float32)
    write_series(tmp_path / "in" / "ct_series", hu, spacing=(0.9, 0.9), iop=(1, 0, 0, 0, 1, 0))
    out = tmp_path / "out"
    res = run_bundle("--config_file", "configs/inference_ct.yaml", "--input_dir", str(tmp_path / "in"),
                     "--output_dir", str(out), "--output_dicom", "true")
    assert res.returncode == 0, res.stderr[-3000:]
    series = find_series(str(tmp_path / "in" / "ct_series"))
    recon = nib.load(str(out / "ct_series_recon.nii.gz"))
    assert recon.shape == (64, 64, 3)
    np.testing.assert_allclose(recon.affine, series.affine(), atol=1e-4)
    back, back_series = read_dicom_series(str(out / "ct_series_recon_dicom"))
    np.testing.assert_allclose(np.asarray(back.affine), series.affine(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(back), recon.get_fdata(), atol=0.1)  # 16-bit rescaled HU
    assert back_series.uid != series.uid

    write_series(tmp_path / "in2" / "two", hu, series_uid="1.2.3.1")
    extra = write_series(tmp_path / "tmp2", hu, series_uid="1.2.3.2")
    for p in extra:
        shutil.move(str(p), str(tmp_path / "in2" / "two" / ("x" + p.name)))
    res = run_bundle("--config_file", "configs/inference_ct.yaml", "--input_dir", str(tmp_path / "in2"),
                     "--output_dir", str(tmp_path / "out2"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "holds 2 series" in res.stderr
    assert not (tmp_path / "out2").exists()
    assert load_input(str(tmp_path / "in2" / "two"), "1.2.3.2").series.uid == "1.2.3.2"  # what --series_uid passes


def test_dicom_rerun_is_refused_whole_or_replaced_whole(tmp_path):
    """A rerun into a folder with NIfTI and DICOM results: refused before anything changes; with
    --overwrite true both the NIfTI files and the derived DICOM series are replaced, consistently,
    and the series folder has the usual permissions (not mkdtemp's 0700)."""
    import os

    from conftest import phantom_volume, run_bundle

    phantom = phantom_volume((64, 64, 3), seed=2)
    hu = np.where(phantom > 0, phantom * 2.0, -1000.0).astype(np.float32)
    write_series(tmp_path / "in" / "s", hu, spacing=(0.9, 0.9), iop=(1, 0, 0, 0, 1, 0))
    out = tmp_path / "out"
    base = ["--config_file", "configs/inference_ct.yaml", "--input_dir", str(tmp_path / "in"), "--output_dir", str(out),
            "--output_dicom", "true", "--dc_iterations", "0"]
    assert run_bundle(*base).returncode == 0

    def state():
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    first = state()
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(out / "s_recon_dicom").st_mode & 0o777) == (0o777 & ~umask)
    res = run_bundle(*base, "--views", "30")
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: output_dir ")
    assert "s_recon_dicom" in res.stderr and state() == first
    res = run_bundle(*base, "--views", "30", "--overwrite", "true")
    assert res.returncode == 0, res.stderr[-2000:]
    recon = nib.load(str(out / "s_recon.nii.gz"))
    back, _ = read_dicom_series(str(out / "s_recon_dicom"))
    np.testing.assert_allclose(np.asarray(back), recon.get_fdata(), atol=0.1)  # the DICOM is the new result
    assert state()[str(Path("s_recon.nii.gz"))] != first["s_recon.nii.gz"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
