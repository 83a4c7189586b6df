"""MONAI bundle components for deep-learning reconstruction: MRI from undersampled k-space, CT from
sparse-view and low-dose scans."""

from bundle import (
    checkpoints, ct_data, ct_physics, ct_transforms, data, dicom, errors, evaluation, fastmri, inference, io, kspace, losses, metrics,
    networks, readers, transforms, xray,
)
from bundle.data import SliceDataset, ensure_datalist, load_datalist
from bundle.errors import InputError
from bundle.losses import SSIMWeightedLoss
from bundle.metrics import VolumeReconMetric
from bundle.networks import ResidualUNet, load_checkpoint
from bundle.transforms import CheckVolumed, ScaleByPercentiled, UndersampleKspaced

__all__ = [
    "CheckVolumed", "InputError", "ResidualUNet", "SSIMWeightedLoss", "ScaleByPercentiled", "SliceDataset",
    "UndersampleKspaced", "VolumeReconMetric", "data", "ensure_datalist", "errors", "evaluation", "inference",
    "io", "kspace", "load_checkpoint", "load_datalist", "losses", "metrics", "networks", "transforms",
]
