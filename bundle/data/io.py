"""File input and output beyond MONAI's readers: checked NIfTI loading and atomic writing.

Every file the bundle writes goes through `atomic_output`: it is written to a temporary file
beside its destination and renamed over it, so a reader never sees a half-written file and a
crash leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import nibabel as nib
import numpy as np

from bundle.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def tmp_path_beside(path: str, suffix: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=d)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    return tmp


@contextmanager
def atomic_output(path: str, suffix: str = "", folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path` (with `suffix`, for writers that choose the format by
    it); when the block ends without an error it is renamed over `path`; in any case nothing
    temporary is left behind. `folder`: the temporary path is an empty folder, and `path` must be
    missing or an empty folder (a folder cannot be renamed over a full one)."""
    if folder:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", suffix=suffix, dir=parent)
    else:
        tmp = tmp_path_beside(path, suffix)
    try:
        yield tmp
        if folder and os.path.isdir(path):
            os.rmdir(path)  # empty: a full one raises here, and the temporary folder goes
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_output(path, ".txt") as tmp, open(tmp, "w") as f:
        f.write(text)


def load_nifti_volume(path: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a 3D NIfTI volume, checked: exists, readable, 3D, real, finite.

    Returns:
        The nibabel image (for its affine and header) and its data as float32 (X, Y, Z).
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    if not is_nifti(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path}: not a NIfTI image")
        if np.iscomplexobj(np.empty(0, dtype=img.get_data_dtype())):
            raise InputError(f"{path}: complex voxels are not supported, give a magnitude image")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except InputError:
        raise
    except Exception as e:  # nibabel/gzip/zlib errors of a corrupt file
        raise InputError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {str(e)[:160]})") from None
    return img, check_volume_array(path, data)


def check_volume_array(path: str, data: np.ndarray) -> np.ndarray:
    """`data` as float32 if it is a finite 3D volume, else an `InputError` naming `path`."""
    if data.ndim != 3:
        hint = ": 4D volumes (several frames) are not supported; give one 3D volume per frame" if data.ndim == 4 else ""
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}{hint}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite voxels")
    return np.asarray(data, dtype=np.float32)


def save_nifti_like(data: np.ndarray, reference: nib.Nifti1Image, path: str) -> None:
    """Write `data` (same shape as `reference`) as float32 NIfTI with the reference's affine and
    header (qform, sform, units, description), atomically."""
    if tuple(data.shape) != tuple(reference.shape):
        raise ValueError(f"{path}: data shape {data.shape} differs from the reference {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine, header)
    img.header.set_slope_inter(None, None)
    save_nifti_atomic(img, path)


def save_nifti_array(data: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write an array (float32, or complex64 for complex data) with `affine` in mm, atomically."""
    data = np.asarray(data)
    dtype = np.complex64 if np.iscomplexobj(data) else np.float32
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(None, None)
    save_nifti_atomic(img, path)


def save_nifti_atomic(img: nib.Nifti1Image, path: str) -> None:
    """`nib.save` to `path` atomically."""
    with atomic_output(path, ".nii.gz" if path.endswith(".gz") else ".nii") as tmp:
        nib.save(img, tmp)


def read_dicom_slice(path: str, what: str = "slice"):
    """One 2D DICOM image: (dataset, float64 pixels with the rescale slope and intercept applied).
    An `InputError` naming the file if it cannot be read or decoded, or is not 2D."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float64)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as a DICOM image ({type(e).__name__}: {str(e)[:120]})") from None
    if pixels.ndim != 2:
        raise InputError(f"{path}: expected one 2D {what}, got pixel data of shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    return ds, pixels * slope + float(getattr(ds, "RescaleIntercept", 0) or 0)
