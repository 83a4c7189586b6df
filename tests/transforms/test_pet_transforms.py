"""PET's prepare_batch: the scan simulated per batch, and the lesion weights of the training target."""

from __future__ import annotations

import pytest
import torch

from bundle.errors import InputError
from bundle.transforms import PETAcquisition, PETScanBatch


def _batch() -> dict:
    act = torch.zeros(2, 1, 32, 32)
    act[:, :, 8:24, 8:24] = 4.0
    lesion = torch.zeros_like(act)
    lesion[0, 0, 12:15, 12:15] = 1
    act[lesion.bool()] = 10.0
    mu = (act > 0).float() * 0.0096
    return {"activity": act, "mu": mu, "brain": (act > 0).float(), "lesion": lesion, "seed": torch.tensor([3, 4]),
            "count_fraction": torch.tensor([0.1, 0.1])}


def test_lesion_weights_ride_in_a_second_target_channel():
    acq = PETAcquisition(views=16, iterations=2, subsets=2)
    plain_in, plain_label = PETScanBatch(acq)(_batch())
    image, label = PETScanBatch(acq, lesion_weight=20)(_batch())
    assert plain_label.shape == (2, 1, 32, 32) and label.shape == (2, 2, 32, 32)
    torch.testing.assert_close(image, plain_in)  # the same seeded scans
    torch.testing.assert_close(label[:, :1], plain_label)
    torch.testing.assert_close(label[:, 1:], 1 + 20 * _batch()["lesion"])


def test_lesion_weight_needs_lesion_maps_and_a_sane_value():
    acq = PETAcquisition(views=16, iterations=1, subsets=2)
    batch = _batch()
    del batch["lesion"]
    with pytest.raises(InputError, match="lesion"):
        PETScanBatch(acq, lesion_weight=5)(batch)
    for bad in (-1, 1e6, float("nan")):
        with pytest.raises(InputError, match="lesion_weight"):
            PETScanBatch(acq, lesion_weight=bad)
