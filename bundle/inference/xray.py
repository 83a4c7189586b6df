"""Radiograph inference: the simulated low-dose exposure of NIfTI radiographs, denoised."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bundle.inference.batching import forward
from bundle.inference.runner import Reconstructor
from bundle.transforms.base import content_key, normalisation_scale
from bundle.transforms.xray import LowDoseRadiographd


class RadiographReconstructor(Reconstructor):
    """Simulate a low-dose acquisition of radiographs stored as (X, Y, 1) and denoise it.

    Outputs "recon" (network) and "low_dose", on the input's intensity scale. The noise is seeded
    by the data and slice, so runs repeat (and renamed copies agree).

    Args:
        network: the denoising network (eval mode is set here).
        incident_photons: photons per pixel at signal 1 (the `percentile`).
        electronic_noise: Gaussian electronic noise, counts.
        percentile: normalisation percentile (as in training).
        device: torch device.
        amp: autocast on CUDA.
    """

    outputs = ("recon", "low_dose")

    def __init__(
        self,
        network: nn.Module,
        incident_photons: float = 200.0,
        electronic_noise: float = 2.0,
        percentile: float = 99.5,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ) -> None:
        self.network = network.eval()
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.noise = LowDoseRadiographd("image", incident_photons, electronic_noise, deterministic=True)
        self.percentile = percentile

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray, spacing=None, name: str = "radiograph") -> dict[str, np.ndarray]:
        """A RAS (X, Y, Z) stack of radiographs -> "recon" and "low_dose" of that shape."""
        vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        scale = normalisation_scale(vol, self.percentile, name)
        recon, noisy = torch.zeros_like(vol), torch.zeros_like(vol)
        network = self.network.to(self.device)
        key = content_key(vol)  # the noise: seeded by the data, never by the file name
        for z in range(vol.shape[2]):
            d = self.noise({"image": (vol[:, :, z] / scale)[None], "slice_id": f"{key}:{z}"})
            pred = forward(network, d["image"][None].to(self.device), self.amp)
            recon[:, :, z] = pred[0, 0].cpu() * scale
            noisy[:, :, z] = d["image"][0] * scale
        return {"recon": recon.numpy(), "low_dose": noisy.numpy()}
