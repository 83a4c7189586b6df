"""The built-in demo data of each modality and their datalists.

- MRI: 10 IXI T1 subjects shipped in `bundle/demo_data/ixi_t1_2mm` (CC BY-SA 3.0).
- CT: two TotalSegmentator test CTs shipped in `bundle/demo_data/ct` (Apache-2.0) and a head CT
  slice from the `pydicom-data` package (CQ500, CC BY-NC-SA 4.0), converted on first use: three
  subjects, three anatomies, two sources.
- Radiographs: the two computed radiographs of `pydicom-data`, converted on first use.
Licences in docs/data_license.txt. Every split is by subject.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import nibabel as nib
import numpy as np

from bundle.data.dicom import DicomSeries
from bundle.data.io import read_dicom_slice, save_nifti_atomic, write_text_atomic
from bundle.errors import InputError

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_data"
DEMO_SPLIT = MappingProxyType({
    "training": ("IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236", "IXI015-HH-1258", "IXI033-HH-1259",
                 "IXI034-HH-1260", "IXI039-HH-1261"),
    "validation": ("IXI048-HH-1326",),
    "test": ("IXI049-HH-1358", "IXI051-HH-1328"),
})
CT_DEMO_DIR = DEMO_DIR / "ct"
CT_DEMO_SPLIT = MappingProxyType({
    "training": ("totalseg_example_ct.nii.gz",),
    "validation": ("totalseg_ct_cropped.nii.gz",),
    "test": ("pydicom_head_ct_693.nii.gz",),
})
PIP_DICOM = MappingProxyType({"pydicom_head_ct_693.nii.gz": "693_UNCR.dcm", "pydicom_ct_small.nii.gz": "CT_small.dcm"})
XRAY_DEMO_DIR = DEMO_DIR / "xray"
# Only two radiographs ship in pip packages: training (and, for lack of a third subject, the
# monitoring "validation") on the tibia, test on the chest: a different subject and anatomy.
XRAY_DEMO_FILES = MappingProxyType({"cr_tibia.nii.gz": "RG3_UNCR.dcm", "cr_chest.nii.gz": "RG1_UNCR.dcm"})
XRAY_DEMO_SPLIT = MappingProxyType({
    "training": ("cr_tibia.nii.gz",), "validation": ("cr_tibia.nii.gz",), "test": ("cr_chest.nii.gz",),
})


def demo_datalist() -> dict[str, list[dict[str, str]]]:
    """The demo datalist, paths relative to `DEMO_DIR`."""
    return {
        split: [{"image": f"ixi_t1_2mm/{s}-T1_ds.nii.gz"} for s in subjects] for split, subjects in DEMO_SPLIT.items()
    }


def ensure_datalist(datalist: str, dataset_dir: str) -> str:
    """Check `dataset_dir` and `datalist`; write the demo datalist if it is the one asked for and missing.

    Idempotent: an existing datalist is never rewritten. Returns `datalist`.
    """
    return ensure_demo_datalist(datalist, dataset_dir, DEMO_DIR, demo_datalist)


def ensure_demo_datalist(
    datalist: str,
    dataset_dir: str,
    demo_dir: Path,
    make_content: Callable[[], dict],
    create_dir: bool = False,
) -> str:
    """Check `dataset_dir` and `datalist`. When the datalist is missing and it is the demo's
    (`<demo_dir>/datalist.json`), call `make_content()` (which may also prepare demo files) and
    write its result; any other missing datalist is an `InputError`. `create_dir`: the demo
    folder itself may be missing (it is made). Never rewrites an existing datalist."""
    is_demo = Path(dataset_dir).resolve() == Path(demo_dir).resolve()
    if not os.path.isdir(dataset_dir) and not (create_dir and is_demo):
        raise InputError(f"dataset_dir {dataset_dir}: no such directory")
    if not os.path.exists(datalist):
        if not is_demo or Path(datalist).name != "datalist.json":
            raise InputError(f"datalist {datalist}: file not found")
        os.makedirs(dataset_dir, exist_ok=True)
        write_text_atomic(datalist, json.dumps(make_content(), indent=2) + "\n")
    return datalist


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
        dicom_slice_to_nifti(str(src), str(out))
    return str(out)


def ensure_ct_datalist(datalist: str, dataset_dir: str) -> str:
    """Like `ensure_datalist` for CT: writes the CT demo datalist (and converts the
    pip-shipped test slice) when the demo datalist is asked for and missing."""

    def content() -> dict:
        for name in CT_DEMO_SPLIT["test"]:
            pip_ct_slice(name, dataset_dir)
        return {k: [{"image": n} for n in v] for k, v in CT_DEMO_SPLIT.items()}

    return ensure_demo_datalist(datalist, dataset_dir, CT_DEMO_DIR, content)


def dicom_radiograph_to_nifti(dicom_path: str, out_path: str, downsample: int = 4) -> str:
    """A DICOM radiograph -> (X, Y, 1) NIfTI of its detector signal (MONOCHROME1 inverted,
    rescale applied), block-averaged by `downsample`, with the pixel spacing in mm."""
    ds, pixels = read_dicom_slice(dicom_path, "radiograph")
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() - pixels
    f = int(downsample)
    h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
    pixels = pixels[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    spacing = [1.0, 1.0]  # unknown (the pydicom-data radiographs have none, or 0.000)
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, tag, None)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            spacing = [float(v) for v in value]
            break
    dr, dc = (v * f for v in spacing)
    img = nib.Nifti1Image(pixels.T[:, :, None].astype(np.float32), np.diag([dc, dr, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    save_nifti_atomic(img, out_path)
    return out_path


def ensure_xray_datalist(datalist: str, dataset_dir: str) -> str:
    """Write the radiograph demo (converted from pydicom-data) and its datalist when they are the
    ones asked for and missing; otherwise check that they exist."""

    def content() -> dict:
        from pydicom.data import get_testdata_file

        for name, dicom in XRAY_DEMO_FILES.items():
            if not (Path(dataset_dir) / name).exists():
                src = get_testdata_file(dicom)
                if src is None:
                    raise InputError(f"{name}: needs {dicom} of the pydicom-data package (pip install pydicom-data)")
                dicom_radiograph_to_nifti(str(src), str(Path(dataset_dir) / name))
        return {k: [{"image": n} for n in v] for k, v in XRAY_DEMO_SPLIT.items()}

    return ensure_demo_datalist(datalist, dataset_dir, XRAY_DEMO_DIR, content, create_dir=True)


PET_DEMO_DIR = DEMO_DIR / "pet"


def ensure_pet_demo(input_dir: str, folder: str | Path = PET_DEMO_DIR) -> str:
    """The PET demo inputs, made on first use when `input_dir` is the PET demo folder: FDG phantoms
    (`bundle.data.pet_phantoms.phantom_volume`, fixed seeds) of the two MRI test subjects, each
    `<subject>_fdg.nii.gz` with its mu-map `<subject>_fdg_mu.nii.gz`, on the T1's RAS grid
    (CC BY-SA 3.0 as their IXI source). Other folders are returned untouched."""
    if Path(input_dir).resolve() != Path(folder).resolve():
        return input_dir
    from bundle.data.pet_phantoms import phantom_volume

    os.makedirs(folder, exist_ok=True)
    for i, subject in enumerate(DEMO_SPLIT["test"]):
        out = os.path.join(folder, f"{subject}_fdg.nii.gz")
        mu_out = os.path.join(folder, f"{subject}_fdg_mu.nii.gz")
        if os.path.exists(out) and os.path.exists(mu_out):
            continue
        src = DEMO_DIR / "ixi_t1_2mm" / f"{subject}-T1_ds.nii.gz"
        act, mu, _, _, first = phantom_volume(str(src), seed=i)
        ref = nib.as_closest_canonical(nib.load(str(src)))
        affine = ref.affine.copy()
        affine[:3, 3] += affine[:3, 2] * first  # the volume starts at its first slice with brain
        for data, path in ((mu, mu_out), (act, out)):  # the map last: a map on disk has its mu-map
            img = nib.Nifti1Image(data.astype(np.float32), affine)
            img.header.set_xyzt_units("mm", "sec")
            save_nifti_atomic(img, path)
    return input_dir

