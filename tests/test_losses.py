import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bundle.errors import InputError
from bundle.losses import SSIMWeightedLoss


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 1, 48, 40, generator=g) * 3
    pred = target + 0.3 * torch.randn(2, 1, 48, 40, generator=g)
    return pred, target


def test_pure_l1_and_mse():
    pred, target = _pair()
    assert SSIMWeightedLoss(ssim_weight=0.0)(pred, target).item() == pytest.approx(
        (pred - target).abs().mean().item(), rel=1e-6
    )
    assert SSIMWeightedLoss(ssim_weight=0.0, pixel_loss="mse")(pred, target).item() == pytest.approx(
        ((pred - target) ** 2).mean().item(), rel=1e-6
    )


def _skimage_ssim(pred, target):
    values = []
    for p, t in zip(pred[:, 0].numpy(), target[:, 0].numpy()):
        m = t.max()
        values.append(structural_similarity(t / m, p / m, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False))
    return float(np.mean(values))


def test_weighted_loss_against_skimage():
    pred, target = _pair(1)
    ssim = _skimage_ssim(pred, target)
    l1 = (pred - target).abs().mean().item()
    assert SSIMWeightedLoss(ssim_weight=1.0)(pred, target).item() == pytest.approx(1 - ssim, abs=1e-4)
    expected = 0.84 * (1 - ssim) + 0.16 * l1
    assert SSIMWeightedLoss()(pred, target).item() == pytest.approx(expected, abs=1e-4)


def test_loss_is_zero_for_a_perfect_prediction_and_differentiable():
    _, target = _pair()
    pred = target.clone().requires_grad_(True)
    loss = SSIMWeightedLoss()(pred, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    (SSIMWeightedLoss()(pred + 0.1, target)).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_bad_options():
    with pytest.raises(InputError, match="ssim_weight"):
        SSIMWeightedLoss(ssim_weight=1.5)
    with pytest.raises(InputError, match="pixel_loss"):
        SSIMWeightedLoss(pixel_loss="huber")
    with pytest.raises(ValueError, match="differ in shape"):
        SSIMWeightedLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_fixed_data_range_compares_on_that_scale():
    pred, target = _pair(2)
    loss = SSIMWeightedLoss(ssim_weight=1.0, data_range=3.0)(pred, target).item()
    values = [structural_similarity(t, p, data_range=3.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
              for p, t in zip(pred[:, 0].numpy(), target[:, 0].numpy())]
    assert loss == pytest.approx(1 - float(np.mean(values)), abs=1e-4)
    with pytest.raises(InputError, match="data_range"):
        SSIMWeightedLoss(data_range=0.0)


def test_pixel_weights_in_an_extra_target_channel():
    """A target with one channel more carries the pixel loss's weights: all ones is the plain
    loss; a weight of 11 on one pixel adds 10 x that pixel's error / N (hand-computed)."""
    pred, target = _pair()
    ones = torch.cat([target, torch.ones_like(target)], 1)
    for kind in ("l1", "mse"):
        loss = SSIMWeightedLoss(ssim_weight=0.3, pixel_loss=kind)
        assert loss(pred, ones).item() == pytest.approx(loss(pred, target).item(), rel=1e-6)
    w = torch.ones_like(target)
    w[1, 0, 5, 7] = 11.0
    weighted = SSIMWeightedLoss(ssim_weight=0.0)(pred, torch.cat([target, w], 1)).item()
    extra = 10 * abs(float(pred[1, 0, 5, 7] - target[1, 0, 5, 7])) / target.numel()
    assert weighted == pytest.approx((pred - target).abs().mean().item() + extra, rel=1e-6)
    # the SSIM term ignores the weights
    assert SSIMWeightedLoss(ssim_weight=1.0)(pred, torch.cat([target, w], 1)).item() == pytest.approx(
        SSIMWeightedLoss(ssim_weight=1.0)(pred, target).item(), rel=1e-6)
