"""CT data: the built-in CT demo datalist, and single DICOM CT slices (such as those that ship in
`pydicom-data`) written as one-slice NIfTI volumes in HU."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data import DEMO_DIR, ensure_demo_datalist
from bundle.dicom import DicomSeries
from bundle.errors import InputError
from bundle.io import read_dicom_slice, save_nifti_atomic

CT_DEMO_DIR = DEMO_DIR / "ct"
# Two TotalSegmentator test CTs (Apache-2.0, see docs/data_license.txt) that ship in the
# repository, and a head CT slice from the `pydicom-data` package (CQ500, CC BY-NC-SA 4.0),
# converted on first use: three subjects, three anatomies, two sources.
CT_DEMO_SPLIT = {
    "training": ["totalseg_example_ct.nii.gz"],
    "validation": ["totalseg_ct_cropped.nii.gz"],
    "test": ["pydicom_head_ct_693.nii.gz"],
}
PIP_DICOM = {"pydicom_head_ct_693.nii.gz": "693_UNCR.dcm", "pydicom_ct_small.nii.gz": "CT_small.dcm"}


def dicom_slice_to_nifti(dicom_path: str, out_path: str) -> str:
    """Write one DICOM CT slice as a (X, Y, 1) NIfTI volume in HU (rescale slope and intercept
    applied), with the slice's spacing and an LPS->RAS affine from its position and orientation."""
    ds, hu = read_dicom_slice(dicom_path, "slice")
    for key, default in (("PixelSpacing", [1.0, 1.0]), ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
                         ("ImagePositionPatient", [0, 0, 0])):
        if key not in ds:
            setattr(ds, key, default)
    affine = DicomSeries(os.path.dirname(dicom_path), "", [dicom_path], [ds]).affine()
    img = nib.Nifti1Image(hu.T[:, :, None].astype(np.float32), affine)
    img.header.set_xyzt_units("mm")
    save_nifti_atomic(img, out_path)
    return out_path


def pip_ct_slice(name: str, folder: str | Path) -> str:
    """The NIfTI version of a `pydicom-data` CT slice in `folder`, converted when missing."""
    out = Path(folder) / name
    if not out.exists():
        try:
            from pydicom.data import get_testdata_file

            src = get_testdata_file(PIP_DICOM[name])
        except Exception:
            src = None
        if src is None:
            raise InputError(f"{name}: needs the DICOM file {PIP_DICOM[name]} of the pydicom-data package "
                             "(pip install pydicom-data)")
        dicom_slice_to_nifti(src, str(out))
    return str(out)


def ensure_ct_datalist(datalist: str, dataset_dir: str) -> str:
    """Like `bundle.data.ensure_datalist` for CT: writes the CT demo datalist (and converts the
    pip-shipped test slice) when the demo datalist is asked for and missing."""

    def content() -> dict:
        for name in CT_DEMO_SPLIT["test"]:
            pip_ct_slice(name, dataset_dir)
        return {k: [{"image": n} for n in v] for k, v in CT_DEMO_SPLIT.items()}

    return ensure_demo_datalist(datalist, dataset_dir, CT_DEMO_DIR, content)
