"""Write the CT datalist of the shipped CT weights: real CT from ../shared/data/ct and pip packages,
split by subject, with the test subjects from other sources than the training ones.

    python scripts/make_ct_datalist.py -o eval/ct_data      # then train / evaluate with
    --dataset_dir eval/ct_data --datalist eval/ct_data/datalist.json

- training: the chest CT (ITKElastix example, 512x512x141, 0.98 mm) and TotalSegmentator's
  abdomen/pelvis example CT (3 mm);
- validation: TotalSegmentator's cropped cardiac CT (1.5 mm);
- test: TotalSegmentator's 20-slice abdominal DICOM series (converted to NIfTI in HU), and two
  single slices from other sources in pip packages: a head CT (pydicom-data, CQ500) and
  pydicom's CT_small (a spine crop).

Converted files are written to the output folder; the shared volumes are linked by absolute path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bundle.data.demo import pip_ct_slice  # noqa: E402
from bundle.data.io import write_text_atomic  # noqa: E402

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"


def dicom_series_to_nifti(folder: Path, out: Path) -> str:
    """A DICOM series folder -> NIfTI in HU with its geometry (MONAI's ITKReader, RAS affine)."""
    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImage

    img = LoadImage(reader="ITKReader", image_only=True, affine_lps_to_ras=True)(str(folder))
    data = np.asarray(img, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.asarray(img.affine, dtype=np.float64)), str(out))
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the datalist and converted files")
    parser.add_argument("--shared", default=str(SHARED_CT), help="the shared CT folder")
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    needed = ["chest_ct_hu.nii.gz", "totalseg_example_ct.nii.gz", "totalseg_ct_cropped.nii.gz", "dicom_example_ct"]
    missing = [n for n in needed if not (shared / n).exists()]
    if missing:
        print(f"error: {shared}: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    series = out / "totalseg_dicom_abdomen.nii.gz"
    if not series.exists():
        dicom_series_to_nifti(shared / "dicom_example_ct", series)
    head = pip_ct_slice("pydicom_head_ct_693.nii.gz", out)
    small = pip_ct_slice("pydicom_ct_small.nii.gz", out)
    content = {
        "training": [{"image": str((shared / n).resolve())} for n in ("chest_ct_hu.nii.gz", "totalseg_example_ct.nii.gz")],
        "validation": [{"image": str((shared / "totalseg_ct_cropped.nii.gz").resolve())}],
        "test": [{"image": os.path.basename(p)} for p in (str(series), head, small)],
    }
    write_text_atomic(str(out / "datalist.json"), json.dumps(content, indent=2) + "\n")
    print(f"{out / 'datalist.json'}: " + ", ".join(f"{k} {len(v)}" for k, v in content.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
