"""DICOM series in (checked, then read with MONAI's `ITKReader`) and a derived DICOM series out.

MONAI's readers load a series but do not tell a user why a folder is unusable: several series
mixed in one folder, a missing slice, a file without pixel data or in a transfer syntax nothing
here can decode. `find_series` checks those from the headers first, so every such folder gets one
line naming it and the problem; the pixels are then read by `ITKReader` (GDCM sorts the slices by
position and applies the rescale slope and intercept, so CT comes out in HU).
"""

from __future__ import annotations

import datetime
import glob
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bundle.data.io import atomic_output
from bundle.errors import InputError

# Transfer syntaxes that ITK's GDCM decodes: uncompressed, deflate, RLE, JPEG (baseline, extended,
# lossless), JPEG-LS, JPEG 2000. Anything else compressed (HTJ2K, JPEG XL, video) has no decoder here.
GDCM_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
})
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.flags.writeable = False


def is_dicom_dir(path: str) -> bool:
    """A folder holding at least one DICOM file (checked by its preamble)."""
    import pydicom

    return os.path.isdir(path) and any(
        os.path.isfile(f) and pydicom.misc.is_dicom(f) for f in glob.glob(os.path.join(path, "*"))
    )


@dataclass
class DicomSeries:
    """One checked series: its files sorted by position along the slice normal, and their headers."""

    folder: str
    uid: str
    files: list[str]
    headers: list  # pydicom Datasets without pixel data, same order as files

    def affine(self) -> np.ndarray:
        """The RAS voxel-to-world affine of the (columns, rows, slices) array, derived from
        ImagePositionPatient, ImageOrientationPatient and PixelSpacing (DICOM's LPS -> RAS)."""
        first = self.headers[0]
        row_dir, col_dir = _orientation(first)
        dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing (between rows), column spacing
        normal = np.cross(row_dir, col_dir)
        if len(self.headers) > 1:
            positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in self.headers])
            step = (positions[-1] - positions[0]) / (len(self.headers) - 1)
        else:
            step = normal * float(getattr(first, "SliceThickness", None) or 1.0)
        lps = np.eye(4)
        lps[:3, 0] = row_dir * dc  # array axis 0 = columns: along the row direction
        lps[:3, 1] = col_dir * dr
        lps[:3, 2] = step
        lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]
        return LPS_TO_RAS @ lps

    def describe(self) -> str:
        h = self.headers[0]
        return f"{self.uid} ({getattr(h, 'Modality', '?')} '{getattr(h, 'SeriesDescription', '')}', {len(self.files)} files)"


def _orientation(ds) -> tuple[np.ndarray, np.ndarray]:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return iop[:3], iop[3:]


def _headers(folder: str) -> list[tuple[str, Any]]:
    import pydicom

    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such DICOM folder")
    out = []
    for f in sorted(glob.glob(os.path.join(folder, "*"))):
        if not os.path.isfile(f) or not pydicom.misc.is_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=False, defer_size="1 KB")
        except Exception as e:
            raise InputError(f"{f}: corrupt DICOM file ({type(e).__name__}: {str(e)[:120]})") from None
        if "SeriesInstanceUID" not in ds:
            raise InputError(f"{f}: no SeriesInstanceUID (a truncated file, or not an image of a series)")
        out.append((f, ds))
    if not out:
        raise InputError(f"{folder}: no DICOM files (with the DICM preamble) in this folder")
    return out


def find_series(folder: str, series_uid: str | None = None) -> DicomSeries:
    """The series of `folder` (or the one with `series_uid`), checked and sorted by position.

    One-line `InputError`s naming the folder or file for: no DICOM files, several series and no
    `series_uid` (the series are listed), a file without pixel data or geometry, a transfer syntax
    without a decoder, slices of different size or orientation, two slices at one position, and
    uneven slice spacing (a missing slice).
    """
    groups: dict[str, list] = {}
    for f, ds in _headers(folder):
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"{folder}: no series with SeriesInstanceUID {series_uid} (found: {', '.join(groups)})")
        uid = series_uid
    elif len(groups) > 1:
        listed = "; ".join(
            DicomSeries(folder, u, [f for f, _ in groups[u]], [d for _, d in groups[u]]).describe() for u in sorted(groups)
        )
        raise InputError(f"{folder}: holds {len(groups)} series; choose one with series_uid=<SeriesInstanceUID> or "
                         f"give each series its own folder: {listed}")
    else:
        uid = next(iter(groups))
    items = groups[uid]
    for f, ds in items:
        if "PixelData" not in ds:
            raise InputError(f"{f}: no pixel data in this DICOM file")
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns") if k not in ds]
        if missing:
            raise InputError(f"{f}: no {', '.join(missing)}: the slice geometry is unknown")
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and str(ts) not in GDCM_TRANSFER_SYNTAXES:
            raise InputError(f"{f}: transfer syntax {ts.name} ({ts}) cannot be decoded here (ITK/GDCM has no decoder for it)")
        if ts is not None and not ts.is_compressed:
            raw = ds.get_item("PixelData")
            length = getattr(raw, "length", None)
            if length is None and isinstance(getattr(raw, "value", None), (bytes, bytearray)):
                length = len(raw.value)
            needed = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1)) * int(getattr(ds, "BitsAllocated", 16)) // 8
            if length is not None and 0 <= length < needed:
                raise InputError(f"{f}: pixel data truncated ({length} of {needed} bytes)")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f}: multi-frame (enhanced) DICOM is not supported; give one file per slice")
    first = items[0][1]
    row_dir, col_dir = _orientation(first)
    normal = np.cross(row_dir, col_dir)
    for f, ds in items:
        r, c = _orientation(ds)
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise InputError(f"{f}: slice size {ds.Rows}x{ds.Columns} differs from {first.Rows}x{first.Columns} in the same series")
        if np.abs(r - row_dir).max() > 1e-3 or np.abs(c - col_dir).max() > 1e-3:
            raise InputError(f"{f}: ImageOrientationPatient differs from the other slices of the series")
    depth = [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for _, ds in items]
    order = np.argsort(depth)
    items = [items[i] for i in order]
    depths = np.asarray(depth)[order]
    if len(items) > 1:
        gaps = np.diff(depths)
        if gaps.min() < 1e-3:
            i = int(np.argmin(gaps))
            raise InputError(f"{folder}: two slices at the same position ({items[i][0]}, {items[i + 1][0]})")
        median = float(np.median(gaps))
        if gaps.max() - gaps.min() > max(0.01 * median, 1e-3):
            raise InputError(
                f"{folder}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, median {median:.3g} mm): "
                f"missing slices? the series must be complete"
            )
    return DicomSeries(folder, uid, [f for f, _ in items], [ds for _, ds in items])


def read_dicom_series(folder: str, series_uid: str | None = None):
    """Read one checked series (`find_series`) with MONAI's `ITKReader`.

    Returns:
        (volume, series): a MetaTensor (columns, rows, slices) in the stored units after the
        rescale slope and intercept (HU for CT), its affine in RAS; and the `DicomSeries`.
    """
    from monai.data import ITKReader
    from monai.transforms import LoadImage

    series = find_series(folder, series_uid)
    # ITKReader reads the whole folder filtered by series; a folder of one file is read as that file
    target = series.files[0] if len(series.files) == 1 else folder
    try:
        img = LoadImage(reader=ITKReader(series_name=series.uid), image_only=True)(target)
    except Exception as e:
        raise InputError(f"{folder}: the DICOM pixel data cannot be read ({type(e).__name__}: {str(e).splitlines()[-1][:160]})") from None
    if img.ndim == 2:
        img = img[..., None]
    if len(series.files) == 1:  # one slice: no slice step to read; the slice thickness, as in affine()
        img.affine = torch.as_tensor(series.affine(), dtype=torch.float64)
    return img, series


def write_dicom_series(
    volume: np.ndarray,
    source: DicomSeries,
    out_dir: str,
    description: str = "deep-learning reconstruction",
    series_number: int | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write `volume` (columns, rows, slices, in `source`'s sorted slice order and units) as a
    derived DICOM series in `out_dir`, atomically (written in a temporary folder, then renamed).
    A non-empty `out_dir` is refused unless `overwrite` (then replaced once the new one is written).

    Each slice copies the source slice's patient, study, geometry and frame-of-reference tags; it
    gets a new SeriesInstanceUID and SOPInstanceUID, ImageType DERIVED\\SECONDARY, a reference to
    the source image, and 16-bit pixels with a rescale slope/intercept that keeps the values.
    Nothing else is invented. Returns the written paths.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    volume = np.asarray(volume, dtype=np.float64)
    expected = (int(source.headers[0].Columns), int(source.headers[0].Rows), len(source.files))
    if volume.shape != expected:
        raise ValueError(f"volume shape {volume.shape} does not match the source series {expected}")
    if not overwrite and os.path.exists(out_dir) and os.listdir(out_dir):
        raise InputError(f"{out_dir}: output folder exists and is not empty; DICOM output needs a new folder")
    lo, hi = float(volume.min()), float(volume.max())
    slope = max(hi - lo, 1e-6) / 65535.0
    intercept = lo
    series_uid = generate_uid()
    now = datetime.datetime.now()
    copied = (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyID",
        "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "ReferringPhysicianName", "Modality",
        "FrameOfReferenceUID", "PositionReferenceIndicator", "ImagePositionPatient", "ImageOrientationPatient",
        "PixelSpacing", "SliceThickness", "SliceLocation", "InstanceNumber", "BodyPartExamined", "Manufacturer",
    )
    written = []
    with atomic_output(out_dir, "-dicom", folder=True) as tmp:
        for k, src in enumerate(source.headers):
            src_meta = getattr(src, "file_meta", None)
            sop_class = src.get("SOPClassUID") or getattr(src_meta, "MediaStorageSOPClassUID", None) or "1.2.840.10008.5.1.4.1.1.7"
            sop_instance = src.get("SOPInstanceUID") or getattr(src_meta, "MediaStorageSOPInstanceUID", None)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(str(sop_class))
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
            for tag in copied:
                if tag in src:
                    ds[tag] = src[tag]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number if series_number is not None else int(getattr(src, "SeriesNumber", 0) or 0) + 1000
            ds.SeriesDescription = description[:64]
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = description[:1024]
            ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID = sop_class
            if sop_instance:
                ref.ReferencedSOPInstanceUID = sop_instance
            ds.SourceImageSequence = [ref]
            ref_series = pydicom.Dataset()
            ref_series.SeriesInstanceUID = source.uid
            ds.ReferencedSeriesSequence = [ref_series]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = int(src.Rows), int(src.Columns)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}"[:16], f"{intercept:.10g}"[:16]
            if getattr(src, "Modality", "") == "CT":
                ds.RescaleType = "HU"
            stored = np.round((volume[:, :, k].T - intercept) / float(ds.RescaleSlope))
            ds.PixelData = np.clip(stored, 0, 65535).astype("<u2").tobytes()
            name = f"{k + 1:04d}.dcm"
            ds.save_as(os.path.join(tmp, name), enforce_file_format=True)
            written.append(os.path.join(out_dir, name))
    return written
