"""ESPIRiT on a coarse grid: the interpolation sits on the FFT grid's pixel positions, and the
coarse maps match the full-grid maps (SigPy's) on simulated coils. PICS with the network's image
as a second prior (`network_pics`) against two other solvers: our CG on the same quadratic
problem without the wavelet term, and SigPy's `L1WaveletRecon` without the prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.parallel_imaging import espirit_maps, fft_grid_resample


def test_fft_grid_resample_puts_samples_where_the_fft_grid_has_them():
    # one cosine cycle over the field of view, sampled on a 32- and a 96-point centred FFT grid
    def cosine(n):
        return np.cos(2 * np.pi * (np.arange(n) - n // 2) / n)

    coarse = np.outer(cosine(16), cosine(32))
    fine = fft_grid_resample(coarse, (48, 96))
    assert fine.shape == (48, 96)
    # linear interpolation of a smooth function: error of order (pi / n)^2 / 2, not a half-pixel shift
    assert np.abs(fine - np.outer(cosine(48), cosine(96))).max() < 0.03
    assert np.array_equal(fft_grid_resample(coarse, (16, 32)), coarse)


def test_coarse_grid_espirit_matches_the_full_grid():
    from bundle.physics.mri import cartesian_mask, fft2c
    from bundle.physics.mri_sense import birdcage_maps

    y, x = np.mgrid[-1:1:192j, -1:1:192j]
    img = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1).astype(np.float32) * (1 + 0.5 * (x > 0.2))
    k = fft2c(birdcage_maps(8, (192, 192)) * torch.from_numpy(img).to(torch.complex64)).numpy()
    mask = cartesian_mask(192, 4, 0.08, "equispaced", np.random.default_rng(0)).numpy()
    acquired = (k * mask).astype(np.complex64)
    full = espirit_maps(acquired, mask, crop=0.0, grid=None)
    coarse = espirit_maps(acquired, mask, crop=0.0, grid=64)
    assert coarse.shape == full.shape == (8, 192, 192)
    np.testing.assert_allclose(np.sqrt((np.abs(coarse) ** 2).sum(0)), 1.0, atol=1e-4)  # unit RSS
    inside = img > 0
    # ESPIRiT's per-pixel phase is relative to coil 0 in both, so the maps compare directly
    assert np.linalg.norm((coarse - full)[:, inside]) / np.linalg.norm(full[:, inside]) < 0.05


def test_espirit_calibration_on_a_square_is_sigpys_espirit():
    """Our step-by-step ESPIRiT (any rectangle) against SigPy's `EspiritCalib` on the centred
    square SigPy takes: the same kernels, Gram matrices and power iterations."""
    import sigpy.mri as mr

    from bundle.parallel_imaging import espirit_calibration
    from bundle.physics.mri import fft2c
    from bundle.physics.mri_sense import birdcage_maps, smooth_phase

    y, x = np.mgrid[-1:1:48j, -1:1:40j]
    img = torch.from_numpy(((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * np.cos(5 * x))).float()
    image = torch.polar(img, smooth_phase((48, 40), torch.Generator().manual_seed(4)))
    k = fft2c(birdcage_maps(6, (48, 40)) * image).numpy()
    k = (k / np.sqrt((np.abs(k) ** 2).mean())).astype(np.complex64)
    for calib, crop in ((16, 0.0), (12, 0.9)):
        ours = espirit_calibration(k, (24 - calib // 2, 24 - calib // 2 + calib, 20 - calib // 2, 20 - calib // 2 + calib),
                                   crop=crop)
        sigpys = np.asarray(mr.app.EspiritCalib(k, calib_width=calib, crop=crop, show_pbar=False).run())
        np.testing.assert_allclose(ours, sigpys, atol=2e-5)
        assert crop == 0 or (np.abs(ours).sum(0) == 0).any()  # the crop zeroes pixels


def test_espirit_on_the_whole_calibration_window_finds_the_maps_better_than_the_square():
    """At 8x on 128 lines (5 calibration lines) SigPy's 5 x 5 square has 4 positions of a 4-sample
    kernel, the 5 x 128 window 250; at 4x (10 lines) 25 against 615 of a 6-sample kernel. The
    true maps are known (up to a phase per pixel); measured: errors 0.091 / 0.056 at 8x and
    0.067 / 0.028 at 4x (square / window)."""
    from bundle.errors import InputError
    from bundle.physics.mri import cartesian_mask, fft2c
    from bundle.physics.mri_sense import random_coil_maps

    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    img = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * (x > 0.2)) * (1 + 0.3 * np.cos(9 * y))
    true = random_coil_maps(12, (128, 128), torch.Generator().manual_seed(1)).numpy()
    k = fft2c(torch.from_numpy(true * img).to(torch.complex64)).numpy()
    inside = img > 0

    def error(maps):
        phase = (maps * true.conj()).sum(0)
        phase = phase / np.maximum(np.abs(phase), 1e-12)
        return np.linalg.norm((maps * phase.conj() - true)[:, inside]) / np.linalg.norm(true[:, inside])

    for acceleration, centre in ((8, 0.04), (4, 0.08)):
        mask = cartesian_mask(128, acceleration, centre, "equispaced", np.random.default_rng(0)).numpy()
        acquired = (k * mask).astype(np.complex64)
        square = espirit_maps(acquired, mask, crop=0.0, calibration="square")
        window = espirit_maps(acquired, mask, crop=0.0, calibration="window")
        np.testing.assert_allclose(np.sqrt((np.abs(window) ** 2).sum(0)), 1.0, atol=1e-4)  # unit RSS
        assert error(window) < 0.7 * error(square)
    with pytest.raises(InputError, match="calibration"):
        espirit_maps(acquired, mask, crop=0.0, calibration="circle")


def test_window24_is_the_calibration_window_cut_to_24_samples_around_the_centre():
    """BART ecalib's default calibration size: the box by hand, then the maps are ESPIRiT on that
    box (a 10-line window over 128 rows keeps rows 52 to 75), and where the window fits in 24 x 24
    they are the window's."""
    from bundle.parallel_imaging import _limit_box, espirit_calibration, scale_of
    from bundle.physics.mri import fft2c
    from bundle.physics.mri_sense import random_coil_maps

    assert _limit_box((0, 128, 59, 69), (128, 128), 24) == (52, 76, 59, 69)
    assert _limit_box((0, 40, 2, 38), (40, 40), 24) == (8, 32, 8, 32)
    assert _limit_box((0, 20, 5, 15), (20, 20), 24) == (0, 20, 5, 15)
    for n, lines in ((128, slice(59, 69)), (20, slice(8, 13))):
        y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
        img = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * (x > 0.2))
        true = random_coil_maps(6, (n, n), torch.Generator().manual_seed(2)).numpy()
        mask = np.zeros(n, np.float32)
        mask[::4], mask[lines] = 1, 1
        k = (fft2c(torch.from_numpy(true * img).to(torch.complex64)).numpy() * mask).astype(np.complex64)
        limited = espirit_maps(k, mask, crop=0.0, calibration="window24")
        if n == 128:
            expected = espirit_calibration(k / scale_of(k), (52, 76, 59, 69), kernel_width=6)
        else:
            expected = espirit_maps(k, mask, crop=0.0, calibration="window")
        np.testing.assert_allclose(limited, expected, atol=1e-6)
        np.testing.assert_allclose(np.sqrt((np.abs(limited) ** 2).sum(0)), 1.0, atol=1e-4)


def test_object_support_covers_the_object_and_not_the_background():
    from bundle.parallel_imaging import object_support

    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 48) ** 2 + (xx - 40) ** 2 < 20 ** 2).astype(np.float32)
    rng = np.random.default_rng(0)
    image = disc + 0.03 * np.abs(rng.standard_normal(disc.shape)).astype(np.float32)  # a noise floor
    support = object_support(image)
    assert support.shape == image.shape and support.min() >= 0 and support.max() <= 1
    assert support[disc > 0][((yy - 48) ** 2 + (xx - 40) ** 2 < 16 ** 2)[disc > 0]].min() > 0.99  # inside
    assert support[(yy - 48) ** 2 + (xx - 40) ** 2 > 28 ** 2].max() < 0.01  # 8 pixels outside the edge


def test_blend_on_the_object_keeps_the_network_in_the_background():
    import pytest

    from bundle.errors import InputError
    from bundle.parallel_imaging import blend_images, object_support

    rng = np.random.default_rng(1)
    net = np.zeros((64, 64), np.float32)
    net[16:48, 16:48] = 1.0
    net += 0.02 * rng.random(net.shape).astype(np.float32)
    pics = net + 0.1 * rng.standard_normal(net.shape).astype(np.float32)
    everywhere = blend_images(net, pics, 0.3, "all")
    np.testing.assert_allclose(everywhere, 0.7 * net + 0.3 * pics, rtol=1e-6, atol=1e-7)
    on_object = blend_images(net, pics, 0.3, "object")
    a = 0.3 * object_support(net)
    np.testing.assert_allclose(on_object, (1 - a) * net + a * pics, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(on_object[:4, :4], net[:4, :4])  # background: the network alone
    np.testing.assert_allclose(on_object[28:36, 28:36], everywhere[28:36, 28:36], rtol=1e-5)
    with pytest.raises(InputError, match="region"):
        blend_images(net, pics, 0.3, "edges")
    # an empty image has no object: the network's (zero) image stays as it is
    assert not object_support(np.zeros((16, 16), np.float32)).any()
    np.testing.assert_array_equal(blend_images(np.zeros((16, 16), np.float32), pics[:16, :16], 0.3, "object"), 0)


def test_gaussian_smooth_is_scipys_gaussian_filter():
    from scipy import ndimage as ndi

    from bundle.parallel_imaging import gaussian_smooth

    rng = np.random.default_rng(2)
    for shape, sigma in (((40, 31), 2.0), ((64, 64), 1.3), ((5, 12), 2.0), ((3, 3), 1.0)):
        x = rng.random(shape).astype(np.float32)
        np.testing.assert_allclose(gaussian_smooth(x, sigma), ndi.gaussian_filter(x, sigma), rtol=1e-5, atol=1e-6)


def _sense_problem(n: int = 32, coils: int = 6):
    from bundle.physics.mri import fft2c
    from bundle.physics.mri_sense import random_coil_maps

    gen = torch.Generator().manual_seed(3)
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    img = torch.from_numpy(((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * (x > 0.2))).to(torch.complex64)
    maps = random_coil_maps(coils, (n, n), gen)
    maps = (maps / (maps.abs() ** 2).sum(0).sqrt()).to(torch.complex64)
    mask = np.zeros(n, bool)
    mask[::3] = True
    mask[n // 2 - 3:n // 2 + 3] = True
    kspace = (fft2c(img * maps).numpy() * mask).astype(np.complex64)
    prior = (img.numpy() * (1 + 0.1 * np.cos(4 * np.pi * x))).astype(np.complex64)  # a near miss
    return kspace, mask, maps.numpy(), prior


def test_network_pics_without_wavelets_is_the_quadratic_solution():
    """lam = 0: argmin 1/2 ||A x - y||^2 + mu/2 ||x - prior||^2, which our CG solves on
    (A^H A + mu I) x = A^H y + mu prior (`regularised_least_squares`, another solver and FFT)."""
    from bundle.parallel_imaging import network_pics
    from bundle.physics.mri_sense import CartesianSense
    from bundle.physics.solvers import regularised_least_squares

    kspace, mask, maps, prior = _sense_problem()
    for mu in (0.05, 1.0):
        ours = network_pics(kspace, mask, maps, 0.0, mu, prior, iterations=300)
        m = torch.from_numpy(np.broadcast_to(mask, kspace.shape[-2:]).astype(np.float32))
        op = CartesianSense(torch.from_numpy(maps), m)
        cg = regularised_least_squares(op, torch.from_numpy(kspace) * m, torch.from_numpy(prior), mu, 200).numpy()
        assert np.abs(ours - cg).max() < 2e-3 * np.abs(cg).max(), mu
    # the prior matters: mu = 1 and mu = 0.05 give different images
    assert np.abs(network_pics(kspace, mask, maps, 0.0, 1.0, prior) - network_pics(kspace, mask, maps, 0.0, 0.05, prior)).max() > 0.01


def test_network_pics_without_the_prior_is_pics():
    """mu = 0: SigPy's L1-wavelet PICS (the baseline), whatever the start."""
    from bundle.parallel_imaging import network_pics, pics

    kspace, mask, maps, prior = _sense_problem()
    joint = network_pics(kspace, mask, maps, 0.005, 0.0, prior, iterations=400)
    reference = pics(kspace, mask, maps, 0.005, iterations=400)
    assert np.abs(np.abs(joint) - np.abs(reference)).max() < 1e-2 * np.abs(reference).max()


def test_network_pics_bound_step_bounds_the_operator_and_reaches_the_same_solution():
    """The "bound" step 1 / (max sum_c |S_c|^2 + mu) is never longer than SigPy's power-iteration
    step (checked against a dense eigenvalue computation of A^H A), and both steps converge to the
    same minimiser."""
    from bundle.parallel_imaging import network_pics
    from bundle.physics.mri_sense import CartesianSense

    kspace, mask, maps, prior = _sense_problem()
    n = kspace.shape[-1]
    m = torch.from_numpy(np.broadcast_to(mask, kspace.shape[-2:]).astype(np.float32))
    op = CartesianSense(torch.from_numpy(maps).to(torch.complex128), m.double())
    basis = torch.eye(n * n, dtype=torch.complex128).reshape(n * n, n, n)
    gram = torch.stack([op.A_adjoint(op.A(b)) for b in basis]).reshape(n * n, n * n)  # rows of A^H A (Hermitian)
    largest = float(torch.linalg.eigvalsh(gram).max())
    bound = float((np.abs(maps) ** 2).sum(0).max())
    assert largest <= bound + 1e-6 and largest > 0.5 * bound
    for lam, mu in ((0.0, 0.05), (0.005, 0.01)):
        power = network_pics(kspace, mask, maps, lam, mu, prior, iterations=400)
        bounded = network_pics(kspace, mask, maps, lam, mu, prior, iterations=400, step="bound")
        assert np.abs(power - bounded).max() < 2e-3 * np.abs(power).max(), (lam, mu)
    with pytest.raises(ValueError, match="step"):
        network_pics(kspace, mask, maps, 0.0, 0.01, prior, step="guess")
    # all-zero maps and no prior term: A = 0, the bound is 0; the solve stays finite
    zero = network_pics(kspace, mask, np.zeros_like(maps), 0.005, 0.0, prior, iterations=3, step="bound")
    assert np.isfinite(zero).all()


def test_combine_with_pics_modes():
    from bundle.errors import InputError
    from bundle.parallel_imaging import combine_with_pics

    kspace, mask, maps, prior = _sense_problem()
    coils = maps * prior  # coil images of the prior: their RSS is |prior| (maps of unit RSS)
    net = np.sqrt((np.abs(coils) ** 2).sum(0))
    assert np.allclose(combine_with_pics(net, coils, kspace, mask, maps, blend=0.0), net, atol=1e-6)
    joint = combine_with_pics(net, coils, kspace, mask, maps, mode="joint", region="all")
    average = combine_with_pics(net, coils, kspace, mask, maps, mode="average", region="all")
    assert joint.shape == average.shape == net.shape and np.abs(joint - average).max() > 1e-3
    with pytest.raises(InputError, match="PICS mode"):
        combine_with_pics(net, coils, kspace, mask, maps, mode="both")
    # the shipped solver (30 bound-step iterations) lands near the 0.18 one (100, SigPy's step)
    for mode, image in (("joint", joint), ("average", average)):
        old = combine_with_pics(net, coils, kspace, mask, maps, mode=mode, region="all", solver="0.18")
        assert np.abs(image - old).max() < 0.02 * np.abs(old).max(), mode
    with pytest.raises(ValueError, match="solver"):
        combine_with_pics(net, coils, kspace, mask, maps, mode="average", solver="fast")


def test_held_out_folds_are_disjoint_acquired_lines_outside_the_calibration_region():
    from bundle.errors import InputError
    from bundle.parallel_imaging import _held_out_folds
    from bundle.physics.mri import cartesian_mask
    from bundle.physics.mri_sense import acs_window

    mask = cartesian_mask(128, 3, 0.1, "equispaced", np.random.default_rng(0)).numpy()
    window = acs_window(torch.from_numpy(mask), (96, 128)).numpy() > 0
    folds = _held_out_folds(mask, (96, 128), 2, 0.1, np.random.default_rng(1))
    assert len(folds) == 2 and not (folds[0] & folds[1]).any()
    for held in folds:
        cols = np.flatnonzero(held.any(0))
        assert held[:, cols].all()  # whole lines, as a scanner drops them
        assert mask[cols].all() and not (held & window).any()
        assert cols.size == round(0.1 * mask.sum())
    # a 2D sampling pattern: single samples, inside the pattern, outside its calibration box
    rng = np.random.default_rng(2)
    pattern = rng.random((64, 64)) < 0.3
    pattern[24:40, 24:40] = True
    box = acs_window(torch.from_numpy(pattern), (64, 64)).numpy() > 0
    for held in _held_out_folds(pattern, (64, 64), 2, 0.1, rng):
        assert held.sum() == round(0.1 * pattern.sum()) and (pattern | ~held).all() and not (held & box).any()
    with pytest.raises(InputError, match="too few acquired samples"):
        _held_out_folds(cartesian_mask(32, 4, 0.25, "equispaced", np.random.default_rng(0)).numpy(), (32, 32), 2, 0.3,
                        np.random.default_rng(0))


def test_cross_validated_weight_predicts_the_held_out_lines_and_grows_with_the_noise():
    """Each candidate's error is the held-out prediction of PICS on the kept lines, rebuilt here
    with SigPy's own SENSE operator (another forward model); the chosen weight grows with the
    noise (the regulariser's job)."""
    import sigpy.mri as mr

    from bundle.parallel_imaging import _held_out_folds, pics, pics_weight_by_cross_validation
    from bundle.physics.mri import cartesian_mask, fft2c

    _, _, maps, _ = _sense_problem(n=64, coils=8)
    y, x = np.mgrid[-1:1:64j, -1:1:64j]  # an ellipse with texture: not sparse enough for the largest weight
    img = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * (x > 0.2) + 0.3 * np.sin(9 * x + 3 * y) * np.cos(7 * y))
    kspace = fft2c(torch.from_numpy(maps * img.astype(np.complex64))).numpy()
    mask = cartesian_mask(64, 2.5, 0.15, "equispaced", np.random.default_rng(0)).numpy()
    rng = np.random.default_rng(4)
    noise = (rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)).astype(np.complex64)
    chosen = []
    for sigma in (0.0, 0.3):
        k = ((kspace + sigma * noise) * mask).astype(np.complex64)
        lam, errors = pics_weight_by_cross_validation(k, mask, maps, folds=1, iterations=40, seed=7)
        assert set(errors) == {0.001, 0.003, 0.01, 0.03, 0.1} and lam == min(errors, key=errors.get)
        chosen.append(lam)
        if sigma == 0.0:
            held = _held_out_folds(mask, k.shape[-2:], 1, 0.1, np.random.default_rng(7))[0]
            kept = np.broadcast_to(mask, k.shape[-2:]) & ~held
            x = pics(k * kept, kept, maps, 0.01, 40)
            pred = mr.linop.Sense(maps)(x)
            expected = np.sum(np.abs(pred[:, held] - k[:, held]) ** 2) / np.sum(np.abs(k[:, held]) ** 2)
            assert errors[0.01] == pytest.approx(expected, rel=1e-3)
    assert chosen[1] > chosen[0], chosen


def test_a_runaway_solve_is_caught_by_its_energy_and_the_network_kept(monkeypatch, caplog):
    import bundle.parallel_imaging as pi

    # by hand: acquired samples of energy 4 (two samples of magnitude sqrt(2)); an image of
    # energy 7.9 is within twice that, one of 8.1 is not
    kspace = np.zeros((2, 4, 4), np.complex64)
    kspace[0, 0, 1] = kspace[1, 2, 1] = np.sqrt(2)
    kspace[0, 0, 2] = 100.0  # not acquired: does not count
    mask = np.array([0, 1, 0, 0], np.float32)
    image = np.zeros((4, 4), np.float32)
    image[0, 0] = np.sqrt(7.9)
    assert pi.plausible_energy(image, kspace, mask)
    image[0, 0] = np.sqrt(8.1)
    with caplog.at_level("WARNING"):
        assert not pi.plausible_energy(image, kspace, mask)
    assert "times the energy of the acquired samples" in caplog.text
    # the shipped combination keeps the network's image when its solve runs away, in both modes
    kspace, mask, maps, prior = _sense_problem()
    coils = maps * prior
    net = np.sqrt((np.abs(coils) ** 2).sum(0)).astype(np.float32)
    for mode in ("joint", "average"):
        assert np.abs(pi.combine_with_pics(net, coils, kspace, mask, maps, mode=mode, region="all") - net).max() > 1e-4
    monkeypatch.setattr(pi, "network_pics", lambda *a, **k: np.full(net.shape, 1e3, np.complex64))
    for mode in ("joint", "average"):
        np.testing.assert_array_equal(pi.combine_with_pics(net, coils, kspace, mask, maps, mode=mode, region="all"), net)
