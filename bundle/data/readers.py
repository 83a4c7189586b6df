"""One entry point for every input format: NIfTI volumes, DICOM series folders, fastMRI HDF5 files.

`LoadVolumed` is the configs' loader (training, evaluation: it gives the fully sampled image as a
MetaTensor with its affine); `load_input` is inference's (the NIfTI reference header for the
outputs, and the source series for DICOM output).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from bundle.data import dicom, fastmri
from bundle.data.ctraw import SINOGRAM_SUFFIX, is_htc_file, measured_ct_kind
from bundle.data.io import check_geometry, check_volume_array, is_nifti, load_nifti_volume
from bundle.data.petlink import HEADER_SUFFIXES, LIST_SUFFIX, is_listmode_file
from bundle.errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5")  # fastMRI, or ISMRMRD (told apart by content: bundle.data.rawkspace)
RAW_SUFFIXES = (".dat", ".cfl")  # Siemens TWIX, BART (its .hdr is found beside the .cfl)


def input_kind(path: str) -> str | None:
    """"nifti", "dicom" (a folder of one series), "fastmri" (HDF5: fastMRI, ISMRMRD or Data
    Exchange CT, told apart by content), "raw" (TWIX .dat, BART .cfl), "ct" (HTC2022 .mat, a
    `<name>_sinogram.npy` that is not a NIfTI volume's given scan), "listmode" (PET list-mode:
    its Interfile header `<name>.l.hdr`, or a `.l` file no header describes) or None. A PET
    activity map's mu-map `<name>_mu.nii.gz` beside `<name>.nii.gz` is not an input of its own."""
    p = str(path)
    if os.path.isdir(p):
        return "dicom" if dicom.is_dicom_dir(p) else None
    if is_nifti(p):
        return None if is_companion(p) else "nifti"
    if is_listmode_file(p):
        return "listmode"
    if p.endswith(HDF5_SUFFIXES):
        return "fastmri"
    if p.endswith(RAW_SUFFIXES):
        return "raw"
    if is_htc_file(p) or (p.endswith(SINOGRAM_SUFFIX) and measured_ct_kind(p)):
        return "ct"  # measured CT projections (HTC2022 .mat, <name>_sinogram.npy with its geometry)
    return None


MU_SUFFIX = "_mu"  # <name>_mu.nii.gz: the mu-map of the PET activity map <name>.nii.gz
MR_SUFFIX = "_mr"  # <name>_mr.nii.gz: its co-registered T1 (the MR-guided PET model's second input)


def is_companion(path: str) -> bool:
    """`<name>_mu.nii(.gz)` or `<name>_mr.nii(.gz)` beside a `<name>.nii(.gz)`: a PET activity
    map's mu-map or T1, inputs of that map, not inputs of their own."""
    p = str(path)
    for suffix in (MU_SUFFIX + ".nii.gz", MU_SUFFIX + ".nii", MR_SUFFIX + ".nii.gz", MR_SUFFIX + ".nii"):
        if p.endswith(suffix):
            base = p[: -len(suffix)]
            return os.path.exists(base + ".nii.gz") or os.path.exists(base + ".nii")
    return False


def list_inputs(input_dir: str) -> list[str]:
    """The inputs in `input_dir`: NIfTI files, fastMRI HDF5 files and DICOM series subfolders,
    sorted; `input_dir` itself when it is a DICOM series folder. An `InputError` if none."""
    if not os.path.isdir(input_dir):
        raise InputError(f"input_dir {input_dir}: no such directory")
    if dicom.is_dicom_dir(input_dir):
        return [input_dir]
    found = sorted(p for p in glob.glob(os.path.join(input_dir, "*")) if input_kind(p) is not None
                   and not (p.endswith("_maps.cfl") and os.path.isfile(p[: -len("_maps.cfl")] + ".cfl")))  # BART maps
    if not found:
        raise InputError(f"input_dir {input_dir}: no inputs (NIfTI .nii/.nii.gz, fastMRI or ISMRMRD .h5, TWIX .dat, "
                         "BART .cfl, DICOM series folders, CT projections: <name>_sinogram.npy, HTC2022 .mat, "
                         "Data Exchange .h5, or PET list-mode <name>.l.hdr)")
    return found


def output_stem(path: str) -> str:
    """The name outputs are written under: the file name without its suffix, or the folder name."""
    name = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".nii", *HDF5_SUFFIXES, *RAW_SUFFIXES, SINOGRAM_SUFFIX, ".mat", *HEADER_SUFFIXES,
                   LIST_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class InputVolume:
    """A loaded input: `data` (X, Y, Z) float32 and the NIfTI image whose affine and header the
    outputs take. `prospective`: `data` is a zero-filled image of an undersampled acquisition
    (fastMRI file with a mask), not a fully sampled one. `series`: the source DICOM series."""

    path: str
    reference: nib.Nifti1Image
    data: np.ndarray
    prospective: bool = False
    series: dicom.DicomSeries | None = None
    kspace_grid: dict | None = None  # prospective files: "zero_filled" (H, W, S) and "mask" (H, W) before the crop


def _reference(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.zeros(data.shape, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    return img


def load_input(path: str, series_uid: str | None = None) -> InputVolume:
    """Load and check one input of any supported kind (one-line `InputError`s naming it)."""
    kind = input_kind(path)
    if kind == "nifti":
        img, data = load_nifti_volume(path)
        return InputVolume(path, img, data)
    if kind == "dicom" or (os.path.isdir(path) and kind is None):
        vol, series = dicom.read_dicom_series(path, series_uid)
        data = check_volume_array(path, np.asarray(vol))
        check_geometry(path, np.asarray(vol.affine))
        return InputVolume(path, _reference(data, np.asarray(vol.affine)), data, series=series)
    if kind == "fastmri":
        f = fastmri.read_fastmri(path)
        if not f.prospective:
            data = check_volume_array(path, fastmri.as_volume(fastmri.reference_image(f)))
            return InputVolume(path, _reference(data, fastmri.volume_affine(f)), data)
        full = fastmri.coil_combined(f, masked=True, crop=False)
        data = check_volume_array(path, fastmri.as_volume(fastmri.center_crop(full, f.crop)))
        grid = {"zero_filled": fastmri.as_volume(full), "mask": fastmri.mask_2d(f), "crop": f.crop}
        return InputVolume(path, _reference(data, fastmri.volume_affine(f)), data, prospective=True, kspace_grid=grid)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    raise InputError(f"{path}: unknown input format (expected .nii/.nii.gz, a fastMRI .h5 file or a DICOM series folder)")


class LoadVolumed(MapTransform):
    """Load the fully sampled image of each key as a MetaTensor (X, Y, Z) with its affine (RAS):
    NIfTI (MONAI's `LoadImage`), a DICOM series folder (`ITKReader`, HU for CT) or a fastMRI HDF5
    file (its reference image). A drop-in for `LoadImaged(image_only=True)` in the configs."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.nifti = LoadImage(image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            kind = input_kind(path)
            if kind == "nifti" or (kind is None and os.path.isfile(path)):  # other formats MONAI reads
                d[key] = self.nifti(path)
                continue
            item = load_input(path)
            if item.prospective:
                raise InputError(f"{path}: prospectively undersampled (it has a 'mask'): no fully sampled reference "
                                 "to train or evaluate on; use it for inference")
            d[key] = MetaTensor(item.data, affine=item.reference.affine, meta={"filename_or_obj": path})
        return d
