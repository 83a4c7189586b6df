"""The linear-operator interface that every acquisition model implements, and power iteration.

An operator maps an image x to measurements y = A x. Solvers (`bundle.physics.solvers`) only use
`A`, `A_adjoint`, `normal` and `norm`, so a new scanner model (multi-coil SENSE, fan-beam CT, PET)
plugs into the same solvers by implementing `A` and `A_adjoint`. The design follows deepinv's
`LinearPhysics` (`A`, `A_adjoint`, `compute_norm`), written here without its dependency.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def power_iteration(apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iterations: int = 10) -> float:
    """The largest eigenvalue of a self-adjoint positive operator `apply` (e.g. A^H A) by
    `iterations` steps of the power method from `start`: ||apply(v)|| for the last unit v."""
    v = start
    norm = torch.ones(())
    for _ in range(iterations):
        v = apply(v)
        norm = v.norm()
        v = v / norm
    return float(norm)


class LinearOperator:
    """y = A x for images x of shape (..., *image_shape) and measurements of (..., *measurement_shape);
    leading dimensions are batch dimensions (slices). Subclasses implement `A` and `A_adjoint`
    (the exact adjoint: <A x, y> = <x, A^H y>) and state their shapes in their docstring.

    `norm()` is ||A^H A||, the largest eigenvalue of the normal operator, by power iteration from
    a fixed start (so it repeats), cached per device in the operator: the scale that makes
    regularisation weights dimensionless and the step size of gradient methods.
    """

    image_shape: tuple[int, ...] = ()

    def __init__(self) -> None:
        self._norms: dict[str, float] = {}

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (the operator's conventional name)
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.A_adjoint(self.A(x))

    def norm_start(self, device: torch.device | str | None) -> torch.Tensor:
        """The fixed start of the power iteration: one image of ones."""
        return torch.ones(1, *self.image_shape, device=device)

    def norm(self, device: torch.device | str | None = None, iterations: int = 10) -> float:
        """||A^H A|| (largest eigenvalue), computed once per device and kept."""
        key = str(device)
        if key not in self._norms:
            self._norms[key] = power_iteration(self.normal, self.norm_start(device), iterations)
        return self._norms[key]
