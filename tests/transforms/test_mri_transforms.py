import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.errors import InputError
from bundle.physics.mri import fft2c
from bundle.transforms import CheckVolumed, ScaleByPercentiled, UndersampleKspaced, check_acquisition


def test_undersample_outputs_and_shapes():
    t = UndersampleKspaced(keys="image", accelerations=[4], deterministic=True)
    img = torch.rand(1, 30, 40)
    d = t({"image": img, "slice_id": "a:1"})
    assert torch.equal(d["label"], img)
    assert d["image"].shape == (1, 30, 40) and d["kspace"].shape == (2, 30, 40) and d["mask"].shape == (1, 1, 40)
    assert d["mask"].sum() == 10 and d["acceleration"] == 4
    k = torch.complex(d["kspace"][0], d["kspace"][1])
    m = d["mask"][0, 0].bool()
    assert torch.allclose(k[:, m], fft2c(img[0])[:, m], atol=1e-5)


def test_deterministic_masks_follow_the_slice_id():
    t = UndersampleKspaced(keys="image", accelerations=[4, 8], deterministic=True, mask_type="random")
    img = torch.rand(1, 32, 64)
    a = t({"image": img, "slice_id": "x:1"})["mask"]
    b = t({"image": img, "slice_id": "x:1"})["mask"]
    masks = {tuple(t({"image": img, "slice_id": f"x:{i}"})["mask"].flatten().tolist()) for i in range(10)}
    assert torch.equal(a, b) and len(masks) > 1


def test_random_masks_follow_the_transform_seed():
    t = UndersampleKspaced(keys="image", accelerations=[4], mask_type="random")
    img = torch.rand(1, 16, 64)
    t.set_random_state(3)
    a = t({"image": img})["mask"]
    t.set_random_state(3)
    assert torch.equal(a, t({"image": img})["mask"])


def test_both_pairs_are_drawn():
    t = UndersampleKspaced(keys="image", accelerations=[4, 8])
    t.set_random_state(0)
    seen = {t({"image": torch.rand(1, 8, 64)})["acceleration"] for _ in range(20)}
    assert seen == {4.0, 8.0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accelerations": [0.5]}, "acceleration must be a number >= 1"),
        ({"accelerations": ["fast"]}, "acceleration must be a number >= 1"),
        ({"mask_type": "spiral"}, "unknown mask_type 'spiral'"),
        ({"accelerations": [4, 8], "center_fractions": [0.08]}, "2 accelerations but 1 center_fractions"),
    ],
)
def test_bad_acquisition_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        UndersampleKspaced(keys="image", **kwargs)
    if "center_fractions" not in kwargs:
        with pytest.raises(InputError, match=message):
            check_acquisition(kwargs.get("accelerations", [4]), kwargs.get("mask_type", "equispaced"))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((8, 8)), "expected a 3D volume, got shape \\(8, 8\\)"),
        (np.ones((4, 4, 4, 2)), "expected a 3D volume, got shape \\(4, 4, 4, 2\\)"),
        (np.full((4, 4, 4), np.nan), "contains NaN or infinite voxels"),
        (np.zeros((4, 4, 4)), "the volume is empty \\(all zeros\\)"),
    ],
)
def test_check_volume_names_the_file(array, message):
    img = MetaTensor(torch.as_tensor(array), meta={"filename_or_obj": "/data/sub-03.nii.gz"})
    with pytest.raises(InputError, match="/data/sub-03.nii.gz: " + message):
        CheckVolumed(keys="image")({"image": img})


def test_scale_by_percentile():
    vol = torch.zeros(1, 10, 10, 10)
    vol[0, 2:8, 2:8, 2:8] = torch.linspace(1, 200, 216).view(6, 6, 6)
    d = ScaleByPercentiled(keys="image", percentile=50)({"image": vol})
    expected = float(torch.quantile(torch.linspace(1, 200, 216), 0.5))
    assert d["image_scale"] == pytest.approx(expected)
    assert torch.allclose(d["image"] * d["image_scale"], vol)
