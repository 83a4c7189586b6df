"""A MONAI `Inferer` that runs a modality's reconstructor, for tools that compose a bundle's
`preprocessing -> inferer(image[None], network) -> postprocessing` (MONAI Label's bundle task).

MONAI's own inferers (SimpleInferer, SlidingWindowInferer) call the network on the image; a
reconstruction first simulates the acquisition (a sinogram, Poisson counts), reconstructs the
baseline and only then runs the network, with data consistency after it: that is the
reconstructor's `reconstruct`, which the command line runs too. So this inferer hands each RAS
volume to the reconstructor (with the network the caller loaded) and returns its "recon": the same
numbers as the command line's `<name>_recon.nii.gz`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

from bundle.errors import InputError
from bundle.networks import check_loaded_weights


class ReconstructorInferer(Inferer):
    """`inferer(inputs, network)`: (B, 1, X, Y, Z) RAS volumes (MetaTensors with their affine, as
    `Orientationd` leaves them) -> (B, 1, X, Y, Z) reconstructions ("recon" of `reconstructor`).

    Args:
        reconstructor: the modality's reconstructor (CTReconstructor, PETReconstructor, ...).
        output: which of its outputs to return.
        modality: the weights the caller loaded must say they are for it (when they say anything).
    """

    def __init__(self, reconstructor, output: str = "recon", modality: str | None = None) -> None:
        super().__init__()
        self.reconstructor, self.output, self.modality = reconstructor, output, modality

    def __call__(self, inputs: torch.Tensor, network: Any, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise InputError(f"expected a batch of single-channel volumes (B, 1, X, Y, Z), got shape {tuple(inputs.shape)}")
        if isinstance(network, torch.nn.Module):
            if self.modality:
                check_loaded_weights(network, self.modality)
            self.reconstructor.network = network.eval()  # the weights the caller loaded
            if hasattr(self.reconstructor, "ckpt_path"):
                self.reconstructor.ckpt_path = None
        meta = getattr(inputs, "meta", None) or {}
        affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
        affine = affine[0] if affine.ndim == 3 else affine
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        names = meta.get("filename_or_obj", "volume")
        out = torch.zeros(inputs.shape, dtype=torch.float32)
        for b in range(inputs.shape[0]):
            name = str(names[b] if isinstance(names, (list, tuple)) else names)
            volume = np.ascontiguousarray(torch.as_tensor(inputs[b, 0]).detach().cpu().numpy(), dtype=np.float32)
            extra = self.reconstructor.check(name, volume, spacing)
            result = self.reconstructor.reconstruct(volume, spacing, "volume", **extra)
            out[b, 0] = torch.from_numpy(np.asarray(result[self.output], dtype=np.float32))
        return out
