"""CT from measured projections (`bundle.data.ctraw.MeasuredScan`: fan- or parallel-beam line
integrals with their geometry): FBP, the network on the FBP image, then data consistency with the
MEASURED sinogram (not a re-simulation), or the TV-regularised baseline instead of the network."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bundle.data.ctraw import MeasuredScan
from bundle.errors import InputError
from bundle.inference.batching import forward
from bundle.physics.ct import sinogram_consistency
from bundle.physics.ct_fan import projector_for
from bundle.physics.ct_geometry import MU_WATER, hu_to_mu, mu_to_hu
from bundle.physics.solvers import check_regularisation
from bundle.physics.tv import tv_least_squares
from bundle.transforms.ct import HU_WINDOW, check_hu_window

METHODS = ("network", "fbp", "tv")


class MeasuredCTReconstructor:
    """Reconstruct measured CT scans slice by slice on the geometry's image grid, in 1/mm.

    Outputs "recon" (by `method`: the network then data consistency, FBP, or TV) and "fbp", each
    (H, W, slices): array rows are the image's y, columns its x (`bundle.physics.ct_fan`).

    Args:
        network: the network on the [0, 1] scale of `window` (HU of the attenuation per mm).
        window, mu_water: that scale.
        filter_name: the FBP filter.
        dc_weight, dc_iterations: data consistency with the measured sinogram after the network
            (`bundle.physics.ct.sinogram_consistency`; 0 iterations: the network alone).
        method: "network", "fbp" (recon = FBP) or "tv" (recon = `tv_least_squares`).
        tv_weight, tv_iterations: the TV baseline's weight (1/mm) and PDHG steps.
        device, amp, progress: as the other reconstructors.
    """

    outputs = ("recon", "fbp")

    def __init__(self, network: nn.Module, window: Sequence[float] = HU_WINDOW, mu_water: float = MU_WATER,
                 filter_name: str = "ramp", dc_weight: float = 1e-3, dc_iterations: int = 12,
                 method: str = "network", tv_weight: float = 3e-4, tv_iterations: int = 300,
                 device: str | torch.device = "cpu", amp: bool = False, progress: bool = True) -> None:
        if method not in METHODS:
            raise InputError(f"measured_ct_method: unknown method {method!r}: expected one of {', '.join(METHODS)}")
        self.network = network.eval()
        self.window = check_hu_window(window)
        self.mu_water = float(mu_water)
        self.filter_name = filter_name
        self.dc_weight, self.dc_iterations = check_regularisation(dc_weight, dc_iterations,
                                                                  ("measured_dc_weight", "measured_dc_iterations"))
        self.tv_weight, self.tv_iterations = check_regularisation(tv_weight, tv_iterations,
                                                                  ("tv_weight", "tv_iterations"))
        if self.tv_iterations < 1:
            raise InputError("tv_iterations must be at least 1")
        self.method = method
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.progress = progress

    def to_unit(self, mu: torch.Tensor) -> torch.Tensor:
        lo, hi = self.window
        return (mu_to_hu(mu, self.mu_water) - lo) / (hi - lo)

    def to_mu(self, unit: torch.Tensor) -> torch.Tensor:
        lo, hi = self.window
        return hu_to_mu(unit * (hi - lo) + lo, self.mu_water)

    @torch.no_grad()
    def reconstruct_scan(self, scan: MeasuredScan, name: str) -> dict[str, np.ndarray]:
        """{"recon", "fbp"}: (H, W, slices) float32 in 1/mm."""
        projector = projector_for(scan.geometry)
        out = {key: np.empty((*scan.geometry.image_shape, scan.slices), dtype=np.float32) for key in self.outputs}
        network = self.network.to(self.device)
        for s in tqdm(range(scan.slices), desc=name, unit="slice", leave=False,
                      disable=not self.progress or scan.slices == 1):
            y = torch.from_numpy(scan.sinogram[s]).to(self.device)
            fbp = projector.fbp(y, self.filter_name)
            if self.method == "fbp":
                recon = fbp
            elif self.method == "tv":
                op = projector.fast_operator(self.device, torch.float32, work=self.tv_iterations + 1)
                recon = tv_least_squares(op, y, self.tv_weight, self.tv_iterations)
            else:
                unit = forward(network, self.to_unit(fbp)[None, None].float(), self.amp)[0, 0]
                recon = self.to_mu(unit.clamp(0.0, 1.0))
                if self.dc_iterations > 0:
                    recon = sinogram_consistency(recon, y, projector, self.dc_weight, self.dc_iterations)
            out["fbp"][..., s] = fbp.cpu().numpy()
            out["recon"][..., s] = recon.cpu().numpy()
        return out

    @staticmethod
    def affine(scan: MeasuredScan) -> np.ndarray:
        """The outputs' affine: voxel (row, column, slice) -> mm, pixel sizes on the diagonal."""
        sy, sx = scan.geometry.pixel_spacing
        return np.diag([sy, sx, 1.0, 1.0])
