"""CT from measured projections (`bundle.data.ctraw.MeasuredScan`: fan- or parallel-beam line
integrals with their geometry): FBP, the network on the FBP image, then data consistency with the
MEASURED sinogram (not a re-simulation), or the TV-regularised baseline instead of the network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bundle.data.ctraw import MeasuredScan
from bundle.errors import InputError
from bundle.inference.batching import forward
from bundle.physics.ct import ParallelBeamProjector, sinogram_consistency
from bundle.physics.ct_fan import FanBeamGeometry, projector_for, rebin_to_parallel
from bundle.physics.ct_geometry import MU_WATER
from bundle.physics.solvers import check_regularisation
from bundle.physics.tv import tv_least_squares
from bundle.transforms.ct import HU_WINDOW, check_hu_window, mu_to_unit, unit_to_mu

METHODS = ("network", "fbp", "tv")


def limited_angle(geom) -> bool:
    """Whether the views miss some lines altogether: an arc below 180 degrees plus the fan angle
    (fan beam) or below 180 degrees (parallel beam)."""
    from bundle.physics.ct_geometry import view_weights

    arc = float(view_weights(geom.angles()).sum())
    needed = math.pi + (2 * geom.half_fan if isinstance(geom, FanBeamGeometry) else 0.0)
    step = arc / max(geom.n_views, 1)
    return arc + step < needed


class MeasuredCTReconstructor:
    """Reconstruct measured CT scans slice by slice on the geometry's image grid, in 1/mm.

    Outputs "recon" (by `method`: the network then data consistency, FBP, or TV) and "fbp", each
    (H, W, slices): array rows are the image's y, columns its x (`bundle.physics.ct_fan`).

    Args:
        network: the network on the [0, 1] scale of `window` (HU of the attenuation per mm).
        window, mu_water: that scale.
        filter_name: the FBP filter.
        fbp: "fan" (fan-beam FBP in the scan's own geometry) or "rebin" (full-circle fan-beam scans
            rebinned to parallel beam first, then parallel-beam FBP; other scans as "fan").
        dc_weight, dc_iterations: data consistency with the measured sinogram after the network
            (`bundle.physics.ct.sinogram_consistency`; 0 iterations: the network alone).
        dc_weight_limited: the weight for limited-angle scans (views covering less than 180
            degrees plus the fan: `limited_angle`), where the network must guess a missing wedge
            and the measured directions deserve more trust; None: `dc_weight`.
        method: "network", "fbp" (recon = FBP) or "tv" (recon = `tv_least_squares`).
        tv_weight, tv_iterations: the TV baseline's weight (1/mm) and PDHG steps.
        device, amp, progress: as the other reconstructors.
        ckpt_path: the network's weights, loaded when the first measured scan comes (`load`), so
            that a folder of NIfTI volumes never needs them.
    """

    outputs = ("recon", "fbp")

    def __init__(self, network: nn.Module, window: Sequence[float] = HU_WINDOW, mu_water: float = MU_WATER,
                 filter_name: str = "ramp", fbp: str = "fan", dc_weight: float = 1e-3, dc_iterations: int = 12,
                 dc_weight_limited: float | None = None, method: str = "network", tv_weight: float = 3e-4, tv_iterations: int = 300,
                 device: str | torch.device = "cpu", amp: bool = False, progress: bool = True,
                 ckpt_path: str | None = None) -> None:
        if method not in METHODS:
            raise InputError(f"measured_ct_method: unknown method {method!r}: expected one of {', '.join(METHODS)}")
        if fbp not in ("fan", "rebin"):
            raise InputError(f"measured_fbp: expected 'fan' or 'rebin', got {fbp!r}")
        self.fbp = fbp
        self.network = network.eval()
        self.window = check_hu_window(window)
        self.mu_water = float(mu_water)
        self.filter_name = filter_name
        self.dc_weight, self.dc_iterations = check_regularisation(dc_weight, dc_iterations,
                                                                  ("measured_dc_weight", "measured_dc_iterations"))
        self.dc_weight_limited = None if dc_weight_limited is None else check_regularisation(
            dc_weight_limited, 0, ("measured_dc_weight_limited", "measured_dc_iterations"))[0]
        self.tv_weight, self.tv_iterations = check_regularisation(tv_weight, tv_iterations,
                                                                  ("tv_weight", "tv_iterations"))
        if self.tv_iterations < 1:
            raise InputError("tv_iterations must be at least 1")
        self.method = method
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.progress = progress
        self.ckpt_path = ckpt_path
        self._loaded = ckpt_path is None

    def load(self) -> None:
        """Load `ckpt_path` into the network once (an `InputError` if it does not fit)."""
        if not self._loaded:
            from bundle.networks import load_checkpoint

            load_checkpoint(self.network, str(self.ckpt_path), self.device, "ct_measured")
            self._loaded = True

    @torch.no_grad()
    def reconstruct_scan(self, scan: MeasuredScan, name: str) -> dict[str, np.ndarray]:
        """{"recon", "fbp"}: (H, W, slices) float32 in 1/mm."""
        if self.method == "network":
            self.load()
        projector = projector_for(scan.geometry)
        out = {key: np.empty((*scan.geometry.image_shape, scan.slices), dtype=np.float32) for key in self.outputs}
        network = self.network.to(self.device)
        dc_weight = self.dc_weight
        if self.dc_weight_limited is not None and limited_angle(scan.geometry):
            dc_weight = self.dc_weight_limited
        for s in tqdm(range(scan.slices), desc=name, unit="slice", leave=False,
                      disable=not self.progress or scan.slices == 1):
            y = torch.from_numpy(scan.sinogram[s]).to(self.device)
            fbp = self._fbp(projector, y, scan.geometry)
            if self.method == "fbp":
                recon = fbp
            elif self.method == "tv":
                op = projector.fast_operator(self.device, torch.float32, work=self.tv_iterations + 1)
                recon = tv_least_squares(op, y, self.tv_weight, self.tv_iterations)
            else:
                unit = forward(network, mu_to_unit(fbp, self.window, self.mu_water)[None, None].float(), self.amp)[0, 0]
                recon = unit_to_mu(unit.clamp(0.0, 1.0), self.window, self.mu_water)
                if self.dc_iterations > 0:
                    recon = sinogram_consistency(recon, y, projector, dc_weight, self.dc_iterations)
            out["fbp"][..., s] = fbp.cpu().numpy()
            out["recon"][..., s] = recon.cpu().numpy()
        return out

    def _fbp(self, projector, y: torch.Tensor, geom) -> torch.Tensor:
        if self.fbp == "rebin" and isinstance(geom, FanBeamGeometry) and geom.arc() >= 2 * math.pi - 1e-6:
            parallel, pgeom = rebin_to_parallel(y, geom)
            return ParallelBeamProjector(pgeom).fbp(parallel, self.filter_name)
        return projector.fbp(y, self.filter_name)

    @staticmethod
    def affine(scan: MeasuredScan) -> np.ndarray:
        """The outputs' affine: voxel (row, column, slice) -> mm, pixel sizes on the diagonal."""
        sy, sx = scan.geometry.pixel_spacing
        return np.diag([sy, sx, 1.0, 1.0])
