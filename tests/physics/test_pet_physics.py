"""PET physics against hand-computed and independent references: the adjoint identity with
attenuation and PSF, attenuation of a water disc by hand, MLEM's count preservation, positivity and
convergence, OSEM with one subset = MLEM, Poisson mean and variance, the PSF's FWHM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.errors import InputError
from bundle.physics.ct import ParallelBeamProjector
from bundle.physics.pet import (
    MU_SOFT_TISSUE,
    PETOperator,
    attenuation_factors,
    calibration,
    check_count_fraction,
    check_mu,
    flat_background,
    gaussian_blur,
    mlem,
    osem,
    pet_geometry,
    poisson_counts,
)


def disc(n=32, r=10.0, cx=0.0, cy=0.0):
    c = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).double()


def system(n=32, views=24, psf=4.0):
    proj = ParallelBeamProjector(pet_geometry((n, n), 2.0, views))
    mu = disc(n, 12) * MU_SOFT_TISSUE
    return PETOperator(proj, attenuation_factors(proj, mu[None]), psf), proj


def test_adjoint_with_attenuation_and_psf():
    op, _ = system()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 32, 32, generator=g, dtype=torch.float64)
    y = torch.rand(2, *op.geom.sinogram_shape, generator=g, dtype=torch.float64)
    lhs = float((op.A(x) * y).sum())
    rhs = float((x * op.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # the subsets' operators too (each an exact adjoint pair)
    sub = op.subset(1, 4)
    ys = y[..., 1::4, :]
    assert abs(float((sub.A(x) * ys).sum()) - float((x * sub.A_adjoint(ys)).sum())) <= 1e-10 * abs(lhs)


def test_attenuation_of_a_water_disc_by_hand():
    # a disc of water of radius R: the central LOR crosses 2R of it, the factor is exp(-2 R mu)
    n, r_px = 64, 20.0
    proj = ParallelBeamProjector(pet_geometry((n, n), 2.0, 8, bins=65, bin_mm=2.0))
    mu = disc(n, r_px) * MU_SOFT_TISSUE
    a = attenuation_factors(proj, mu[None].float())[0]
    centre = a[:, 32]
    expected = math.exp(-2 * r_px * 2.0 * MU_SOFT_TISSUE)
    assert torch.allclose(centre, torch.full_like(centre, expected), rtol=0.02)
    assert float(a[:, 0].min()) == pytest.approx(1.0)  # a LOR outside the body is not attenuated


def test_mlem_keeps_counts_positivity_and_converges():
    op, _ = system(psf=0.0)
    truth = (disc(32, 11) + 3 * disc(32, 4, cx=4)).double()
    y = op.A(truth[None].double())
    errors = []
    x = None
    for its in (5, 50, 300):
        x = mlem(op, y.float(), 0.0, iterations=its)
        errors.append(float((x[0] - truth).norm() / truth.norm()))
        assert float(x.min()) >= 0
        # with no background MLEM's expected counts sum to the measured counts exactly
        assert float(op.A(x.double()).sum()) == pytest.approx(float(y.sum()), rel=1e-4)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.08
    # positivity with noisy counts and a background
    counts = poisson_counts(op.A(truth[None]).float() * 20 + 5, torch.Generator().manual_seed(1))
    x = osem(op, counts, 5.0, iterations=3, subsets=4)
    assert float(x.min()) >= 0 and torch.isfinite(x).all()


def test_osem_with_one_subset_is_mlem():
    op, _ = system()
    truth = disc(32, 11).float() * 2
    counts = poisson_counts(op.A(truth[None]) * 50 + 1, torch.Generator().manual_seed(2))
    a = osem(op, counts, 1.0, iterations=7, subsets=1)
    b = mlem(op, counts, 1.0, iterations=7)
    assert torch.equal(a, b)
    # and more subsets converge faster in early iterations (the point of OSEM)
    truth_b = truth[None]
    err = [float((osem(op, counts, 1.0, iterations=2, subsets=s) / 50 - truth_b).norm()) for s in (1, 8)]
    assert err[1] < err[0]


def test_poisson_statistics_of_the_simulated_counts():
    op, _ = system(psf=4.0)
    truth = disc(32, 11).float()[None]
    trues = 2e4
    projected = op.A(truth)
    expected = projected * calibration(projected, trues)
    assert float(expected.sum()) == pytest.approx(trues, rel=1e-5)
    background = flat_background(expected, 0.5)
    assert float(background.sum()) == pytest.approx(0.5 * trues, rel=1e-5)
    # the acquisition's calibration: the operator it scales projects the activity to those trues
    from bundle.transforms.pet import PETAcquisition

    calibrated = op.with_factors(op.factors.clone())
    returned = PETAcquisition.calibrate(calibrated, truth, torch.full((1, 1, 1), trues))
    assert torch.allclose(returned, calibrated.A(truth), rtol=1e-5)
    assert float(calibrated.A(truth).sum()) == pytest.approx(trues, rel=1e-5)
    rates = (expected + background)[0]
    g = torch.Generator().manual_seed(3)
    samples = torch.stack([poisson_counts(rates, g) for _ in range(400)])
    assert bool((samples == samples.round()).all()) and float(samples.min()) >= 0
    mean, var = samples.mean(0), samples.var(0)
    busy = rates > 5
    # per bin: the mean within 4 standard errors; over bins, mean and variance both equal the rate
    assert bool(((mean - rates).abs()[busy] < 4 * (rates[busy] / 400).sqrt()).all())
    assert float(mean[busy].sum() / rates[busy].sum()) == pytest.approx(1.0, abs=0.01)
    assert float(var[busy].sum() / rates[busy].sum()) == pytest.approx(1.0, abs=0.05)


def test_psf_fwhm_and_total():
    img = torch.zeros(1, 65, 65, dtype=torch.float64)
    img[0, 32, 32] = 1.0
    out = gaussian_blur(img, 6.0, 1.5)[0, 32]  # 6 mm FWHM on 1.5 mm pixels = 4 pixels
    half = float(out.max()) / 2
    above = (out >= half).nonzero().flatten()
    # width at half maximum, interpolated on both sides
    lo, hi = int(above.min()), int(above.max())
    left = lo - 1 + (half - float(out[lo - 1])) / float(out[lo] - out[lo - 1])
    right = hi + (float(out[hi]) - half) / float(out[hi] - out[hi + 1])
    assert (right - left) * 1.5 == pytest.approx(6.0, rel=0.03)
    # the kernel is truncated at 4 sigma (MONAI): 2e-5 of the total lies beyond
    assert float(gaussian_blur(img, 6.0, 1.5).sum()) == pytest.approx(1.0, rel=1e-4)


def test_bad_values_are_input_errors():
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(InputError, match="count_fraction"):
            check_count_fraction(bad)
    with pytest.raises(InputError, match="outside"):
        check_mu(torch.tensor([0.0, 0.2]))
    with pytest.raises(InputError, match="NaN"):
        check_mu(torch.tensor([0.0, float("nan")]))
    op, _ = system()
    with pytest.raises(InputError, match="subsets"):
        osem(op, torch.ones(1, *op.geom.sinogram_shape), 0.0, subsets=op.geom.n_views + 1)
    assert np.isfinite(op.norm())


def test_psf_is_monais_gaussian_filter():
    """The physics layer's blur against MONAI's GaussianFilter (approx "erf"), a second implementation."""
    from monai.networks.layers import GaussianFilter

    x = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    for fwhm, pixel in ((4.0, 2.0), (6.0, 1.5), (2.0, 2.0)):
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2))) / pixel
        ref = GaussianFilter(2, sigma)(x[:, None])[:, 0]
        assert torch.allclose(gaussian_blur(x, fwhm, pixel), ref, atol=1e-6)
