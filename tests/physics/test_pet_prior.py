"""MR-guided penalised-likelihood EM (Bowsher prior, De Pierro's update) against independent
references: the weights of a hand-made MR by hand, symmetry, beta 0 = OSEM exactly, the penalised
objective never decreasing with one subset (De Pierro's guarantee), positivity and the prior's
effect: less error than OSEM on a noisy piecewise-constant phantom whose MR shows its edges."""

from __future__ import annotations

import math

import pytest
import torch

from bundle.errors import InputError
from bundle.physics.ct import ParallelBeamProjector
from bundle.physics.pet import PETOperator, attenuation_factors, calibration, osem, pet_geometry, poisson_counts
from bundle.physics.pet_prior import OFFSETS, bowsher_weights, log_likelihood, map_em, penalty, shifted


def phantom(n=32):
    c = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = (xx**2 + (yy / 1.1) ** 2).sqrt()
    act = torch.where(r < 13, 1.0, 0.0) + torch.where((r > 9) & (r < 13), 3.0, 0.0)  # a "grey" rim 4, "white" 1
    mr = torch.where(r < 13, 600.0, 0.0) + torch.where(r <= 9, 500.0, 0.0)  # the T1: white brighter than grey
    mu = torch.where(r < 14, 0.0096, 0.0)
    return act, mr, mu


def scan(act, mu, trues=2e4, seed=0, views=32):
    proj = ParallelBeamProjector(pet_geometry(act.shape, 2.0, views))
    op = PETOperator(proj, attenuation_factors(proj, mu[None]), 4.0)
    expected = op.A(act[None])
    scale = calibration(expected, trues)
    op.factors = op.factors * scale
    expected = expected * scale
    bg = torch.full_like(expected, 0.2 * float(expected.mean()))
    counts = poisson_counts(expected + bg, torch.Generator().manual_seed(seed))
    return op, counts, bg


def test_weights_by_hand():
    # a 3 x 3 MR; with 3 neighbours the centre (5) picks 5.1 (right), 5.2 (below), 4.7 (below right)
    mr = torch.tensor([[0.0, 1.0, 9.0], [3.0, 5.0, 5.1], [7.0, 5.2, 4.7]])
    w = bowsher_weights(mr, neighbours=3)
    centre = {OFFSETS[i]: float(w[i, 1, 1]) for i in range(8)}
    r2 = 1 / math.sqrt(2)
    # worked by hand: every corner has only 3 neighbours in the image, so picks all (the centre
    # too): 1/2 from it, and 4.7 is also picked by the centre; the edges 1 (picks 0, 3, 5) and 3
    # (picks 1, 5, 5.2) pick the centre, which does not pick them: 1/2; 5.1 and 5.2 pick it back: 1
    expected = {(-1, -1): r2 / 2, (-1, 0): 0.5, (-1, 1): r2 / 2, (0, -1): 0.5, (0, 1): 1.0,
                (1, -1): r2 / 2, (1, 0): 1.0, (1, 1): r2}
    for off, value in expected.items():
        assert centre[off] == pytest.approx(value), off
    # with 2 neighbours the corner 0 picks 1 and 3, and the centre picks 5.1 and 5.2: no weight
    two = bowsher_weights(mr, neighbours=2)
    assert float(two[OFFSETS.index((-1, -1)), 1, 1]) == 0.0
    assert float(two[OFFSETS.index((0, 1)), 1, 1]) == pytest.approx(1.0)
    # the weights are symmetric: w_jk seen from j equals w_kj seen from k
    big = bowsher_weights(torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(0)), neighbours=4)
    for i, (dy, dx) in enumerate(OFFSETS):
        back = OFFSETS.index((-dy, -dx))
        torch.testing.assert_close(big[:, i], shifted(big[:, back], dy, dx))
    # no weight leaves the image; the diagonal ones are divided by sqrt 2
    assert float(big[:, OFFSETS.index((-1, 0)), 0].abs().sum()) == 0.0
    assert float(big[:, OFFSETS.index((1, 1))].max()) <= 1 / math.sqrt(2) + 1e-6
    with pytest.raises(InputError, match="neighbours"):
        bowsher_weights(mr, neighbours=0)


def test_beta_zero_is_osem_and_bad_options():
    act, mr, mu = phantom()
    op, counts, bg = scan(act, mu)
    w = bowsher_weights(mr[None])
    torch.testing.assert_close(map_em(op, counts, bg, w, 0.0, iterations=3, subsets=4),
                               osem(op, counts, bg, iterations=3, subsets=4), rtol=1e-5, atol=1e-6)
    x0 = osem(op, counts, bg, iterations=2, subsets=4)  # a warm start: the same as OSEM continued from it
    torch.testing.assert_close(map_em(op, counts, bg, w, 0.0, iterations=2, subsets=4, start=x0),
                               osem(op, counts, bg, iterations=2, subsets=4, start=x0), rtol=1e-5, atol=1e-6)
    for bad in (-1.0, float("nan"), "strong", True):
        with pytest.raises(InputError, match="beta_rel"):
            map_em(op, counts, bg, w, bad)


def test_the_penalised_objective_never_decreases_with_one_subset():
    act, mr, mu = phantom()
    op, counts, bg = scan(act, mu, trues=5e3)
    w = bowsher_weights(mr[None])
    beta_rel = 0.5
    # beta as map_em sets it: beta_rel x mean sensitivity / the uniform start's activity
    ones = torch.ones(1, *act.shape)
    level = (counts - bg).sum() / op.A(ones).sum()
    beta = beta_rel * float(op.A_adjoint(torch.ones_like(counts)).mean()) / float(level)
    values = []
    map_em(op, counts, bg, w, beta_rel, iterations=15, subsets=1,
           callback=lambda it, x: values.append(float(log_likelihood(op, counts, bg, x) - beta * penalty(x, w))))
    steps = [b - a for a, b in zip(values, values[1:])]
    assert min(steps) >= -1e-4 * abs(values[-1]), steps
    assert values[-1] > values[0]


def test_the_prior_helps_where_the_mr_shows_the_edges():
    act, mr, mu = phantom()
    op, counts, bg = scan(act, mu, trues=3e3, seed=1)
    head = mu > 0
    err = {}
    x = map_em(op, counts, bg, bowsher_weights(mr[None]), 1.0, iterations=10, subsets=4)
    assert float(x.min()) >= 0 and torch.isfinite(x).all()
    err["bowsher"] = float(((x[0] - act)[head] ** 2).mean().sqrt())
    err["osem"] = float(((osem(op, counts, bg, 10, 4)[0] - act)[head] ** 2).mean().sqrt())
    assert err["bowsher"] < 0.8 * err["osem"], err
