"""The operator interface and the generic solvers, against independent references: adjoint
identities, eigenvalues and direct solves of explicit matrices, hand-computed norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.physics.ct import ParallelBeamProjector, sparse_view_geometry
from bundle.physics.ct_matrix import SystemMatrix
from bundle.physics.mri import CartesianSingleCoil, cartesian_mask, fft2c
from bundle.physics.operator import LinearOperator, power_iteration
from bundle.physics.solvers import check_regularisation, fista, regularised_least_squares
from bundle.physics.wavelets import haar_l1_prox


class DenseOperator(LinearOperator):
    """A small explicit matrix as an operator: images (..., n) -> (..., m)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = matrix
        self.image_shape = (matrix.shape[1],)

    def A(self, x):  # noqa: N802
        return x.to(self.matrix.dtype) @ self.matrix.T

    def A_adjoint(self, y):  # noqa: N802
        return y @ self.matrix.conj()


def test_cartesian_operator_is_exactly_adjoint_and_has_unit_norm():
    gen = torch.Generator().manual_seed(0)
    mask = cartesian_mask(24, 4, 0.08, "random", np.random.default_rng(1))
    op = CartesianSingleCoil(mask, (20, 24))
    x = torch.randn(3, 20, 24, dtype=torch.complex128, generator=gen)
    y = torch.randn(3, 20, 24, dtype=torch.complex128, generator=gen)
    lhs = torch.vdot(op.A(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
    assert abs(complex(lhs - rhs)) < 1e-10 * abs(complex(lhs))
    # A^H A = F^H M F is a projection: its norm is exactly 1 (by hand), which power iteration finds
    assert op.norm() == pytest.approx(1.0, abs=1e-5)  # float32 start
    assert torch.allclose(op.A(x), fft2c(x) * mask.to(torch.float64))  # M F: the lines the mask keeps


def test_power_iteration_finds_the_largest_eigenvalue():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(12, 9, dtype=torch.float64, generator=gen)
    op = DenseOperator(a)
    expected = float(torch.linalg.eigvalsh(a.T @ a)[-1])
    assert power_iteration(op.normal, torch.ones(1, 9, dtype=torch.float64), 200) == pytest.approx(expected, rel=1e-8)
    assert op.norm(iterations=200) == pytest.approx(expected, rel=1e-8)
    assert op._norms  # kept: a second call does not iterate again
    op.matrix = 2 * a
    assert op.norm(iterations=200) == pytest.approx(expected, rel=1e-8)


def test_regularised_least_squares_equals_the_direct_solve_per_item():
    """CG on (A^H A + lam I) x = A^H y + lam x0 against numpy's solve, each batch item on its own."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(15, 10, dtype=torch.float64, generator=gen)
    op = DenseOperator(a)
    y = torch.randn(2, 15, dtype=torch.float64, generator=gen)
    x0 = torch.randn(2, 10, dtype=torch.float64, generator=gen)
    lam = 0.3
    got = regularised_least_squares(op, y, x0, lam, iterations=10)  # n steps solve an n-dimensional system
    for i in range(2):
        direct = np.linalg.solve((a.T @ a + lam * torch.eye(10)).numpy(), (a.T @ y[i] + lam * x0[i]).numpy())
        np.testing.assert_allclose(got[i].numpy(), direct, atol=1e-8)
    assert torch.equal(regularised_least_squares(op, y, x0, lam, iterations=0), x0)


def test_fista_with_the_haar_prox_lowers_the_objective_and_solves_the_orthonormal_case():
    """With A = I the L1-Haar problem has the closed form W^T soft(W y): FISTA reaches it."""
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(2, 16, 16, dtype=torch.complex128, generator=gen)
    prox = haar_l1_prox(0.2, 2)
    got = fista(torch.zeros_like(y), lambda z: z - y, prox, iterations=30)
    assert torch.allclose(got, prox(y), atol=1e-10)
    with pytest.raises(ValueError, match="at least 1"):
        fista(y, lambda z: z, prox, iterations=0)


def test_ct_projector_and_its_matrix_share_one_norm():
    """The sparse matrix is the same A: it takes the projector's norm (computed once, by either)."""
    geom = sparse_view_geometry((20, 18), (1.0, 1.2), 12, 720)
    projector = ParallelBeamProjector(geom)
    matrix = SystemMatrix(projector)
    first = matrix.norm()
    assert projector.norm() == first  # the value the matrix computed, not a second one
    fresh = ParallelBeamProjector(geom).norm()
    assert fresh == pytest.approx(first, rel=1e-5)  # the two implementations agree to float rounding
    projector.release()
    assert projector.norm() == first


@pytest.mark.parametrize("weight,iterations,message", [(-1, 3, "weight must be >= 0"), (1e-3, 1.5, "whole number"),
                                                       ("a", 3, "must be numbers"), (float("nan"), 3, ">= 0")])
def test_regularisation_settings_are_checked(weight, iterations, message):
    from bundle.errors import InputError

    with pytest.raises(InputError, match=message):
        check_regularisation(weight, iterations)
