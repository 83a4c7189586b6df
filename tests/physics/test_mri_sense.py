"""Multi-coil Cartesian MRI: the SENSE operator's exact adjoint, CG-SENSE on a phantom, the
normalisation of estimated and simulated sensitivities, and data consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import phantom_volume

from bundle.errors import InputError
from bundle.physics.mri import cartesian_mask, fft2c
from bundle.physics.mri_sense import (
    CartesianSense,
    acs_bounds,
    acs_window,
    birdcage_maps,
    cg_sense,
    estimate_sensitivities,
    random_coil_maps,
    rss,
    smooth_phase,
)


def phantom(h: int = 48, w: int = 40) -> torch.Tensor:
    img = torch.from_numpy(phantom_volume((h, w, 1), seed=5)[..., 0] / 100.0).to(torch.float64)
    return img * torch.exp(1j * torch.linspace(0, 1, w, dtype=torch.float64))[None, :]  # smooth phase


def test_sense_operator_is_exactly_adjoint_in_float64():
    gen = torch.Generator().manual_seed(0)
    maps = birdcage_maps(6, (20, 24), dtype=torch.complex128)
    mask = cartesian_mask(24, 3, 0.2, "random", np.random.default_rng(0))
    op = CartesianSense(maps, mask)
    x = torch.randn(2, 20, 24, dtype=torch.complex128, generator=gen)
    y = torch.randn(2, 6, 20, 24, dtype=torch.complex128, generator=gen)
    lhs, rhs = torch.vdot(op.A(x).flatten(), y.flatten()), torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))
    assert op.A(x).shape == (2, 6, 20, 24) and op.A_adjoint(y).shape == (2, 20, 24)
    # with unit-RSS maps and a full mask, A^H A is the identity
    full = CartesianSense(maps, torch.ones(24))
    assert torch.allclose(full.normal(x), x, atol=1e-12)


def test_simulated_and_estimated_maps_are_normalised():
    maps = birdcage_maps(8, (32, 32), rotation=0.3, dtype=torch.complex128)
    assert torch.allclose(rss(maps, 0), torch.ones(32, 32, dtype=torch.float64), atol=1e-12)
    img = phantom(32, 32)
    mask = cartesian_mask(32, 4, 0.25, "equispaced", np.random.default_rng(0))
    kspace = fft2c(img * maps) * mask.to(torch.float64)
    est = estimate_sensitivities(kspace, mask)
    support = img.abs() > 0.2 * img.abs().max()
    norms = rss(est, 0)
    assert torch.allclose(norms[support], torch.ones_like(norms[support]), atol=1e-6)
    # the estimate's phase relative to the true maps is one phase per pixel (that of the image),
    # the same for every coil: est_c * conj(S_c) / |.| agrees across coils where the signal is
    rel = est * maps.conj()
    rel = rel / rel.abs().clamp_min(1e-12)
    spread = (rel - rel.mean(0, keepdim=True)).abs().amax(0)
    assert float(spread[support].median()) < 0.1


def test_cg_sense_with_true_maps_recovers_a_phantom_at_r2():
    img = phantom()
    maps = birdcage_maps(8, img.shape, dtype=torch.complex128)
    mask = torch.zeros(img.shape[-1])
    mask[::2] = 1  # R = 2, no calibration lines: SENSE alone unfolds the aliasing
    kspace = CartesianSense(maps, mask).A(img)
    x = cg_sense(kspace, mask, maps, iterations=40)
    zero_filled = CartesianSense(maps, mask).A_adjoint(kspace)
    err = float((x - img).norm() / img.norm())
    assert err < 1e-3 and err < 0.01 * float((zero_filled - img).norm() / img.norm())


def test_data_consistency_lowers_the_residual_on_the_acquired_samples():
    img = phantom()
    maps = birdcage_maps(4, img.shape, dtype=torch.complex128)
    mask = cartesian_mask(img.shape[-1], 4, 0.16, "equispaced", np.random.default_rng(1))
    op = CartesianSense(maps, mask)
    y = op.A(img)
    start = img * 0.7 + 0.05  # a wrong image
    from bundle.physics.solvers import regularised_least_squares

    fixed = regularised_least_squares(op, y, start, 1e-3, 10)
    assert float((op.A(fixed) - y).norm()) < 0.05 * float((op.A(start) - y).norm())


def test_bad_multicoil_inputs():
    maps = birdcage_maps(4, (16, 16))
    with pytest.raises(InputError, match="lines but the sensitivities"):
        CartesianSense(maps, torch.ones(12))
    with pytest.raises(InputError, match="no fully sampled k-space centre"):
        mask = torch.ones(16)
        mask[8] = 0
        acs_bounds(mask)
    assert acs_bounds(torch.tensor([1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0])) == (5, 9)
    with pytest.raises(InputError, match="coils"):
        birdcage_maps(0, (8, 8))


def test_calibration_region_of_line_and_sample_masks():
    lines = torch.tensor([1, 0, 0, 1, 1, 1, 1, 0, 1, 0], dtype=torch.bool)
    window = acs_window(lines, (6, 10))
    assert window.shape == (6, 10) and window[:, 3:7].all() and window.sum() == 24
    samples = torch.zeros(12, 10, dtype=torch.bool)
    samples[::3, ::2] = True
    samples[4:9, 3:8] = True  # a 5 x 5 fully sampled box around the centre (6, 5)
    samples[4, 7] = False     # with one hole in a corner: the box shrinks to what is full
    window = acs_window(samples, (12, 10))
    rows, cols = np.flatnonzero(window.any(1)), np.flatnonzero(window.any(0))
    assert samples[window.bool()].all() and rows.tolist() == [5, 6, 7] and cols.tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(InputError, match="no fully sampled k-space centre"):
        acs_window(torch.zeros(12, 10, dtype=torch.bool), (12, 10))
    with pytest.raises(InputError, match="the mask is"):
        acs_window(samples, (12, 12))


def test_random_coils_and_phase_for_training_are_normalised_and_smooth():
    gen = torch.Generator().manual_seed(3)
    maps = random_coil_maps(12, (40, 36), gen)
    assert maps.shape == (12, 40, 36)
    torch.testing.assert_close(rss(maps, 0), torch.ones(40, 36), atol=1e-5, rtol=0)
    other = random_coil_maps(12, (40, 36), torch.Generator().manual_seed(4))
    assert not torch.allclose(maps, other)  # placement and rotation are random
    phase = smooth_phase((40, 36), gen, max_radians=2.0)
    assert float(phase.abs().max()) <= 2.0 * 1.01 * 10 ** 0.5  # coefficients bounded by the scale
    assert float(phase.diff(dim=0).abs().max()) < 0.5 and float(phase.diff(dim=1).abs().max()) < 0.5
    with pytest.raises(InputError, match="coils"):
        random_coil_maps(0, (8, 8), gen)


@pytest.mark.slow
def test_multicoil_baselines_study_runs_on_the_shared_real_scans():
    """The study's table on the real 16-channel brain (../shared): every method row present."""
    import subprocess
    import sys

    from conftest import ROOT, SHARED, run_env

    if not (SHARED / "kspace" / "multicoil").is_dir():
        pytest.skip("../shared/data/kspace/multicoil is not here (the real multi-coil scans)")
    res = subprocess.run([sys.executable, "scripts/studies/multicoil_baselines.py", "--accelerations", "4",
                          "--lambdas", "1e-3", "--cg-weights", "0.05"], cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| 4x |")]
    assert [r.split("|")[4].strip().split(" (")[0] for r in rows] == ["zero-filled RSS", "CG-SENSE", "PICS"]
