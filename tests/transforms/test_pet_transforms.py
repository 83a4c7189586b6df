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


def test_the_osem_baseline_is_the_one_tuned_for_the_count_level():
    from bundle.transforms.pet import OSEM_BASELINE_BY_LEVEL, tuned_baseline

    # the rows, and the nearest row in log scale between them (0.15 is nearer 0.1 than 0.25)
    for level, it, flt in OSEM_BASELINE_BY_LEVEL:
        assert tuned_baseline(level) == (it, flt)
    assert tuned_baseline(0.15) == tuned_baseline(0.1) and tuned_baseline(0.17) == tuned_baseline(0.25)
    assert tuned_baseline(1.0) == tuned_baseline(0.25) and tuned_baseline(0.001) == tuned_baseline(0.05)
    assert PETAcquisition(count_fraction=0.25).baseline_setting() == tuned_baseline(0.25)
    assert PETAcquisition(count_fraction=0.05).baseline_setting(level=0.1) == tuned_baseline(0.1)
    # explicit values override either half of the row
    assert PETAcquisition(baseline_iterations=3).baseline_setting() == (3, tuned_baseline(0.1)[1])
    assert PETAcquisition(baseline_filter_mm=0).baseline_setting() == (tuned_baseline(0.1)[0], 0.0)
    for kw in ({"baseline_iterations": "often"}, {"baseline_iterations": 0}, {"baseline_iterations": 2.5},
               {"baseline_filter_mm": -1}, {"baseline_filter_mm": "wide"}, {"iterations": "auto"}):
        with pytest.raises(InputError, match=next(iter(kw))):
            PETAcquisition(**kw)


def test_the_baseline_runs_the_setting_of_its_level():
    acq = PETAcquisition(views=16, subsets=2)
    b = _batch()
    op, counts, bg = acq.simulate(b["activity"][:, 0], b["mu"][:, 0], 2.0,
                                  generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    for level in (0.25, 0.05):
        it, flt = acq.baseline_setting(level)
        torch.testing.assert_close(acq.baseline(op, counts, bg, level=level), acq.reconstruct(op, counts, bg, it, flt))
    assert not torch.allclose(acq.baseline(op, counts, bg, level=0.25), acq.baseline(op, counts, bg, level=0.05))


def test_the_evaluation_batch_carries_each_slices_tuned_baseline():
    acq = PETAcquisition(views=16, iterations=2, subsets=2)
    b = _batch()
    b["count_fraction"] = torch.tensor([0.25, 0.05])  # two levels, two settings in one batch
    image, label = PETScanBatch(acq, baseline=True)(b)
    assert b["baseline"].shape == image.shape
    # the same scans, one slice at a time, reconstructed with that slice's tuned setting
    for i, level in enumerate((0.25, 0.05)):
        one = {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in _batch().items()}
        one["count_fraction"] = torch.tensor([level])
        op, counts, bg = acq.simulate(one["activity"][:, 0], one["mu"][:, 0], 2.0, one["count_fraction"],
                                      [torch.Generator().manual_seed(int(one["seed"][0]))])
        s = label[i:i + 1].new_tensor(float(one["activity"].sum() / label[i].sum()))  # the batch's scale
        expected = acq.baseline(op, counts, bg, level=level)[:, None] / s
        torch.testing.assert_close(b["baseline"][i:i + 1], expected, rtol=1e-4, atol=1e-5)
    plain = _batch()
    PETScanBatch(acq)(plain)  # training and validation: no baseline computed
    assert "baseline" not in plain


def test_the_t1_rides_as_the_second_input_channel():
    acq = PETAcquisition(views=16, iterations=2, subsets=2)
    batch = _batch()
    plain_in, plain_label = PETScanBatch(acq)(_batch())
    batch["mr"] = torch.rand(2, 1, 32, 32)
    image, label = PETScanBatch(acq, anatomy=True)(batch)
    assert image.shape == (2, 2, 32, 32)
    torch.testing.assert_close(image[:, :1], plain_in)  # the same seeded scans, the same scale
    torch.testing.assert_close(image[:, 1:], batch["mr"])
    torch.testing.assert_close(label, plain_label)
    with pytest.raises(InputError, match="'mr'"):
        PETScanBatch(acq, anatomy=True)(_batch())
