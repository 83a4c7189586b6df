"""Data: datalists and the demo data, the slice datasets, and the readers and writers of every
input format (NIfTI, DICOM series, fastMRI HDF5), by module:

- `datalists`: checked MONAI datalists; `demo`: the built-in demo data of each modality;
- `datasets`: `SliceDataset` (3D volumes served as cached 2D slices), `RawKspaceSlices` (real coils);
- `readers`: one loader for every input format; `io`: checked NIfTI, atomic writing;
- `dicom`: DICOM series in and out; `fastmri`: fastMRI HDF5 raw k-space;
- `rawkspace`: multi-coil raw k-space of every format (fastMRI, ISMRMRD, TWIX, BART);
- `ctraw`: measured CT projections (sinogram + geometry JSON, HTC2022 .mat, Data Exchange HDF5);
  `MeasuredCTSlices` (in `datasets`) trains on them;
- `pet_phantoms`: FDG brain phantoms from T1 MRI and `PETPhantomSlices`; `petlink`: PET list-mode.

The names the configs use are re-exported here (`bundle.data.SliceDataset`, ...).
"""

from bundle.data.datalists import load_datalist
from bundle.data.datasets import (
    MeasuredCTSlices,
    RawKspaceSlices,
    SliceDataset,
    VolumeSlices,
    foreground_fraction,
    meta_tracking_off,
    slice_axis_index,
)
from bundle.data.demo import (
    DEMO_DIR,
    PET_DEMO_DIR,
    ensure_ct_datalist,
    ensure_datalist,
    ensure_pet_demo,
    ensure_xray_datalist,
)
from bundle.data.pet_phantoms import PETPhantomSlices

__all__ = (
    "DEMO_DIR", "PET_DEMO_DIR", "ensure_pet_demo", "MeasuredCTSlices", "PETPhantomSlices", "RawKspaceSlices", "SliceDataset", "VolumeSlices", "ensure_ct_datalist", "ensure_datalist", "ensure_xray_datalist",
    "foreground_fraction", "load_datalist", "meta_tracking_off", "slice_axis_index",
)
