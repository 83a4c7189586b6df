import numpy as np
import pytest
import torch
from conftest import phantom_volume
from skimage.metrics import structural_similarity

from bundle.physics.wavelets import haar, ihaar
from bundle.reporting.compressed_sensing import cs_reconstruct, objective
from bundle.physics.mri import apply_mask, cartesian_mask, fft2c, undersample


def test_haar_is_orthonormal_and_inverted():
    x = torch.randn(2, 32, 48, dtype=torch.complex64)
    c = haar(x, 3)
    assert torch.allclose((c.abs() ** 2).sum(), (x.abs() ** 2).sum(), rtol=1e-5)
    assert torch.allclose(ihaar(c, 3), x, atol=1e-5)
    # adjoint = inverse for an orthonormal transform
    y = torch.randn(2, 32, 48, dtype=torch.complex64)
    assert torch.allclose(torch.vdot(haar(x, 3).flatten(), y.flatten()), torch.vdot(x.flatten(), ihaar(y, 3).flatten()),
                          rtol=1e-4)


def test_cs_on_a_phantom():
    ref = torch.from_numpy(phantom_volume((80, 96, 1), seed=3)[..., 0] / 100.0)
    mask = cartesian_mask(96, 4, 0.08, "random", np.random.default_rng(0))
    zf, k = undersample(ref.to(torch.float64), mask)
    lam = 2e-3
    x = cs_reconstruct(k, mask, lam=lam, iterations=100)
    # FISTA decreases the objective from the zero-filled start
    assert objective(x, k, mask, lam) < objective(torch.complex(zf, torch.zeros_like(zf)), k, mask, lam)
    # and it stays consistent with the data: the residual is far below the signal
    residual = (apply_mask(fft2c(x), mask) - k).abs().norm() / k.abs().norm()
    assert residual < 0.05
    start = cs_reconstruct(k, mask, lam=lam, iterations=1)
    assert residual < (apply_mask(fft2c(start * 0), mask) - k).abs().norm() / k.abs().norm()
    r = ref.numpy()
    ssim_cs = structural_similarity(r, x.abs().numpy(), data_range=r.max())
    ssim_zf = structural_similarity(r, zf.numpy(), data_range=r.max())
    assert ssim_cs > ssim_zf + 0.05


def test_bad_options():
    k = torch.zeros(8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="lam"):
        cs_reconstruct(k, torch.ones(8), lam=-1)
    with pytest.raises(ValueError, match="iterations"):
        cs_reconstruct(k, torch.ones(8), iterations=0)
