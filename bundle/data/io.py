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


TMP_PREFIX = ".tmp-"  # every temporary file and folder the bundle writes starts with this


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def tmp_path_beside(path: str, suffix: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=d)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    return tmp


@contextmanager
def atomic_output(path: str, suffix: str = "", folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path` (with `suffix`, for writers that choose the format by
    it); when the block ends without an error it is renamed over `path`; in any case nothing
    temporary is left behind. `folder`: the temporary path is an empty folder (with the usual
    permissions, not mkdtemp's 0700); a folder already at `path` is moved aside, the new one renamed
    into place, and only then the old one removed."""
    if folder:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=suffix, dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        tmp = tmp_path_beside(path, suffix)
    try:
        yield tmp
        if folder and os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=os.path.dirname(os.path.abspath(path)))
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.remove(tmp)


def remove_leftovers(folder: str, logger=None) -> None:
    """Remove the temporary files and folders (`.tmp-*`, the bundle's own prefix) that a killed run
    left in `folder`; a finished write leaves none. Each removal is logged as a warning."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            if logger is not None:
                logger.warning("removed %s, left by an interrupted run", path)


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
        check_geometry(path, np.eye(4), raw_pixdim(path))  # before nibabel repairs (and logs) bad voxel sizes
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path}: not a NIfTI image")
        if np.iscomplexobj(np.empty(0, dtype=img.get_data_dtype())):
            raise InputError(f"{path}: complex voxels are not supported, give a magnitude image")
        check_geometry(path, img.affine)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except InputError:
        raise
    except Exception as e:  # nibabel/gzip/zlib errors of a corrupt file
        raise InputError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {str(e)[:160]})") from None
    return img, check_volume_array(path, data)


# Beyond this, float32 sums and squares in FFTs, projections and losses overflow (3.4e38) and the
# outputs would be wrong without any error. Real data stay far below: scanner images are 16- or
# 32-bit integers, HU or Bq/ml; the largest here, the RSS of a raw k-space file, is 2.8e12
# (the SigPy 8-coil brain of ../shared, via tests/data/test_fastmri.py).
MAX_ABS_VALUE = 1e18


def check_geometry(path: str, affine: np.ndarray, zooms=None) -> None:
    """An `InputError` unless the voxel-to-world `affine` is finite and invertible and the voxel
    sizes (`zooms`, mm) are positive: the outputs are written back in this geometry."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{path}: the affine (voxel-to-world matrix) has NaN or infinite entries")
    if zooms is not None:
        z = [float(v) for v in zooms]
        if not all(np.isfinite(v) and v > 0 for v in z):
            raise InputError(f"{path}: voxel sizes must be positive, got {tuple(round(v, 6) for v in z)} mm")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if not (sizes > 0).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9 * max(float(np.prod(sizes)), 1e-300):
        raise InputError(f"{path}: the affine is singular (voxel sizes {tuple(round(float(v), 6) for v in sizes)} mm): "
                         "no orientation can be read from it")


def raw_pixdim(path: str) -> np.ndarray:
    """The voxel sizes (pixdim[1:4]) as stored in a NIfTI file's header: `nib.load` replaces zero
    and negative ones (by 1 and their absolute value) and only logs a warning."""
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as f:
        head = f.read(4)
    size = int.from_bytes(head, "little") if int.from_bytes(head, "little") in (348, 540) else int.from_bytes(head, "big")
    klass = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    with ImageOpener(path) as f:
        header = klass.from_fileobj(f, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


def check_volume_array(path: str, data: np.ndarray) -> np.ndarray:
    """`data` as float32 if it is a finite 3D volume of plausible values, else an `InputError`
    naming `path`."""
    if data.ndim != 3:
        hint = ": 4D volumes (several frames) are not supported; give one 3D volume per frame" if data.ndim == 4 else ""
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}{hint}")
    if data.size == 0:
        raise InputError(f"{path}: empty volume, shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite voxels")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_VALUE:
        raise InputError(f"{path}: voxel values up to {peak:.3g}, beyond any scanner's range (|value| <= "
                         f"{MAX_ABS_VALUE:.0e}, or float32 arithmetic overflows); check the scaling (scl_slope) of the file")
    return np.asarray(data, dtype=np.float32)


def nifti_like(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """`data` (same shape as `reference`) as a float32 NIfTI image with the reference's affine and
    header (qform, sform, units, description)."""
    if tuple(data.shape) != tuple(reference.shape):
        raise ValueError(f"data shape {data.shape} differs from the reference {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine, header)
    img.header.set_slope_inter(None, None)
    return img


def nifti_array(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """An array (float32, or complex64 for complex data) as a NIfTI image with `affine` in mm."""
    data = np.asarray(data)
    dtype = np.complex64 if np.iscomplexobj(data) else np.float32
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(None, None)
    return img


def save_nifti_like(data: np.ndarray, reference: nib.Nifti1Image, path: str) -> None:
    """Write `nifti_like(data, reference)` to `path`, atomically."""
    try:
        img = nifti_like(data, reference)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    save_nifti_atomic(img, path)


def save_nifti_array(data: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write `nifti_array(data, affine)` to `path`, atomically."""
    save_nifti_atomic(nifti_array(data, affine), path)


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
