"""MONAI dictionary transforms that the configs compose, one module per modality over the physics
layer: `base` (checks, normalisation, seeded simulation), `mri`, `multicoil`, `ct`, `pet`, `xray`.

The names are re-exported here, so configs may say `bundle.transforms.<Name>`."""

from bundle.transforms.base import (
    CheckVolumed,
    RestoreScaled,
    ScaleByPercentiled,
    SliceSeededTransform,
    normalisation_scale,
    percentile_scale,
    slice_seed,
    source_name,
)
from bundle.transforms.ct import (
    DISPLAY_WINDOWS,
    HU_CHECKS,
    HU_WINDOW,
    CTAcquisition,
    CTDataConsistency,
    HounsfieldWindowd,
    SimulateCTd,
    check_hu,
    check_hu_mode,
    check_hu_window,
    hu_problem,
    hu_to_unit,
    unit_to_hu,
)
from bundle.transforms.mri import UndersampleKspaced, check_acquisition
from bundle.transforms.multicoil import AugmentCoilKspaced, EspiritMapsd, SimulateMultiCoild, UndersampleMultiCoild
from bundle.transforms.pet import PETAcquisition, PETScanBatch, activity_scale
from bundle.transforms.xray import LowDoseRadiographd

__all__ = (
    "AugmentCoilKspaced", "DISPLAY_WINDOWS", "HU_CHECKS", "HU_WINDOW", "CTAcquisition", "CTDataConsistency", "CheckVolumed",
    "HounsfieldWindowd", "LowDoseRadiographd", "PETAcquisition", "PETScanBatch", "activity_scale", "RestoreScaled", "ScaleByPercentiled", "SimulateCTd",
    "EspiritMapsd", "SimulateMultiCoild", "SliceSeededTransform", "UndersampleKspaced", "UndersampleMultiCoild", "check_acquisition", "check_hu", "check_hu_mode", "check_hu_window",
    "hu_problem", "hu_to_unit", "normalisation_scale", "percentile_scale", "slice_seed", "source_name", "unit_to_hu",
)
