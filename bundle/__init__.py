"""MONAI bundle components for deep-learning reconstruction: MRI from undersampled k-space, CT from
sparse-view and low-dose scans, low-dose radiographs.

Layers, each importing only those above it: `physics` (operators, noise, solvers: pure torch) ->
`transforms` (MONAI transforms per modality) -> `data` (datalists, datasets, readers, writers) ->
`networks`, `varnet`, `losses`, `metrics`, `checkpoints` -> `inference` (one runner, one reconstructor per
modality), `evaluation`. `reporting` serves the scripts only. See README.md, "Architecture".
"""

from bundle import (
    checkpoints,
    data,
    errors,
    evaluation,
    inference,
    losses,
    metrics,
    networks,
    options,
    physics,
    transforms,
    varnet,
)
from bundle.data import SliceDataset, ensure_datalist, load_datalist
from bundle.errors import InputError
from bundle.losses import SSIMWeightedLoss
from bundle.metrics import VolumeReconMetric
from bundle.networks import ResidualUNet, load_checkpoint
from bundle.transforms import CheckVolumed, ScaleByPercentiled, UndersampleKspaced

__all__ = (
    "CheckVolumed", "InputError", "ResidualUNet", "SSIMWeightedLoss", "ScaleByPercentiled", "SliceDataset",
    "UndersampleKspaced", "VolumeReconMetric", "checkpoints", "data", "ensure_datalist", "errors", "evaluation",
    "inference", "load_checkpoint", "load_datalist", "losses", "metrics", "networks", "options", "physics", "transforms",
    "varnet",
)
