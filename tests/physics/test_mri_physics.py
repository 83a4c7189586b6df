import numpy as np
import pytest
import torch

from bundle.physics.mri import (
    cartesian_mask,
    data_consistency,
    default_center_fraction,
    fft2c,
    ifft2c,
    undersample,
)
from bundle.transforms.base import slice_seed


@pytest.mark.parametrize("mask_type", ["equispaced", "random"])
@pytest.mark.parametrize("num_cols", [96, 120, 128, 257])
@pytest.mark.parametrize("acc", [4, 8])
def test_mask_exact_acceleration_and_centre(mask_type, num_cols, acc):
    cf = default_center_fraction(acc)
    mask = cartesian_mask(num_cols, acc, cf, mask_type, np.random.default_rng(1)).numpy()
    assert mask.dtype == bool and mask.shape == (num_cols,)
    assert mask.sum() == round(num_cols / acc)
    num_low = round(num_cols * cf)
    pad = (num_cols - num_low + 1) // 2
    assert mask[pad : pad + num_low].all()


def test_fastmri_centre_fractions():
    assert default_center_fraction(4) == pytest.approx(0.08)
    assert default_center_fraction(8) == pytest.approx(0.04)


@pytest.mark.parametrize("mask_type", ["equispaced", "random"])
def test_mask_determinism(mask_type):
    a = cartesian_mask(128, 4, 0.08, mask_type, np.random.default_rng(7))
    b = cartesian_mask(128, 4, 0.08, mask_type, np.random.default_rng(7))
    c = cartesian_mask(128, 4, 0.08, mask_type, np.random.default_rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert slice_seed("a.nii.gz", 3) == slice_seed("a.nii.gz", 3) != slice_seed("a.nii.gz", 4)


def test_equispaced_lines_are_evenly_spread():
    mask = cartesian_mask(256, 8, 0.0, "equispaced", np.random.default_rng(0)).numpy()
    gaps = np.diff(np.flatnonzero(mask))
    assert gaps.min() >= 7 and gaps.max() <= 9


def test_fft_is_unitary_and_inverted():
    x = torch.randn(3, 20, 17, dtype=torch.complex64)
    k = fft2c(x)
    assert torch.allclose(ifft2c(k), x, atol=1e-5)
    assert torch.allclose((k.abs() ** 2).sum(), (x.abs() ** 2).sum(), rtol=1e-4)


def test_fully_sampled_mask_gives_back_the_image():
    image = torch.rand(2, 1, 30, 24)
    zf, _ = undersample(image, torch.ones(24, dtype=torch.bool))
    assert torch.allclose(zf, image, atol=1e-5)


def test_undersampling_keeps_only_masked_lines():
    image = torch.rand(1, 32, 32)
    mask = cartesian_mask(32, 4, 0.08, "random", np.random.default_rng(0))
    _, k = undersample(image, mask)
    assert torch.all(k[..., ~mask] == 0)
    assert torch.allclose(k[..., mask], fft2c(image)[..., mask])


def test_data_consistency_keeps_acquired_lines_exactly():
    image = torch.rand(2, 1, 32, 40)
    mask = cartesian_mask(40, 4, 0.08, "equispaced", np.random.default_rng(0))
    _, k = undersample(image, mask)
    estimate = torch.rand(2, 1, 32, 40)
    out = data_consistency(estimate, k, mask)
    k_out = fft2c(out)
    assert torch.allclose(k_out[..., mask], k[..., mask], atol=1e-5)
    assert torch.allclose(k_out[..., ~mask], fft2c(estimate)[..., ~mask], atol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="acceleration"):
        cartesian_mask(64, 0.5, 0.08)
    with pytest.raises(ValueError, match="unknown mask_type"):
        cartesian_mask(64, 4, 0.08, "spiral")
    with pytest.raises(ValueError, match="lines"):
        undersample(torch.rand(8, 8), torch.ones(9, dtype=torch.bool))
