"""MRI inference: the simulated Cartesian undersampling of fully sampled volumes, slice by slice,
and the reconstruction of prospectively undersampled fastMRI k-space."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from bundle.data.datasets import slice_axis_index
from bundle.errors import InputError
from bundle.inference.batching import CPU_BATCH_PIXELS, check_cpu_batch_pixels, forward, in_batches, slices_per_call
from bundle.inference.runner import Reconstructor
from bundle.networks import check_loaded_weights
from bundle.physics.mri import fft2c, undersample
from bundle.transforms.base import content_key, normalisation_scale
from bundle.transforms.mri import UndersampleKspaced

logger = logging.getLogger(__name__)


MIN_SLICE_PIXELS = 8  # BasicUNet halves a slice four times; smaller slices are not images


class SliceReconstructionInferer(Inferer):
    """A MONAI `Inferer` for fully sampled volumes: simulate the Cartesian undersampling of each
    slice along `slice_axis` (a deterministic mask per slice, seeded by the volume's content and
    `seed`) and reconstruct it with the
    network (with its data-consistency step), in batches.

    `inferer(inputs, network)` takes (B, 1, X, Y, Z) normalised RAS volumes (what
    `preprocessing` in configs/inference.yaml gives) and returns the reconstructions, same shape:
    the contract of MONAI Label's bundle inference task. `MRIReconstructor` uses the same code.

    Args:
        acceleration: undersampling factor.
        center_fraction: fully sampled centre; default 0.32 / acceleration (fastMRI).
        mask_type: "equispaced" or "random".
        slice_axis: "axial", "coronal", "sagittal" or 0, 1, 2 (RAS).
        batch_size: slices per forward pass (on the CPU, fewer: see `cpu_batch_pixels`).
        amp: autocast (CUDA only).
        seed: changes every mask (the masks depend on the data and this seed only).
        cpu_batch_pixels: on the CPU, at most this many pixels per forward pass (faster there:
            `bundle.inference.batching.CPU_BATCH_PIXELS`); the results are the same up to float rounding.
    """

    def __init__(
        self,
        acceleration: float = 4,
        center_fraction: float | None = None,
        mask_type: str = "equispaced",
        slice_axis: int | str = "axial",
        batch_size: int = 16,
        amp: bool = False,
        cpu_batch_pixels: int = CPU_BATCH_PIXELS,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = int(seed)
        self.undersample = UndersampleKspaced(
            keys="image",
            accelerations=[acceleration],
            center_fractions=None if center_fraction is None else [center_fraction],
            mask_type=mask_type,
            deterministic=True,
        )
        self.axis = slice_axis_index(slice_axis)
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.cpu_batch_pixels = check_cpu_batch_pixels(cpu_batch_pixels)

    def mask_key(self, content: str) -> str:
        """What the masks are seeded by: the data's `content_key` and the configured seed."""
        return f"{content}:{self.seed}" if self.seed else content

    @torch.no_grad()
    def reconstruct_slices(self, network: nn.Module, slices: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
        """(S, H, W) normalised slices -> "recon", "zero_filled", "mask" (S, H, W) on the CPU."""
        device = next(network.parameters()).device
        amp = self.amp and device.type == "cuda"
        slices = slices.detach().float().cpu()
        height, width = slices.shape[-2], slices.shape[-1]

        def run(batch: slice) -> dict[str, torch.Tensor]:
            # masks drawn per slice on the CPU (seeded by content key and slice), the FFTs batched on the device
            mask = torch.stack([self.undersample.draw({"slice_id": f"{name}:{i}"}, width)[0]
                                for i in range(batch.start, batch.stop)])
            mask = mask.float().view(-1, 1, 1, width).to(device)
            image, k = undersample(slices[batch, None].to(device), mask)
            kspace = torch.cat([k.real, k.imag], dim=1).float()
            pred = forward(network, image.float(), amp, kspace=kspace, mask=mask)
            return {"recon": pred[:, 0].cpu(), "zero_filled": image[:, 0].float().cpu(),
                    "mask": mask[:, 0].cpu().expand(-1, height, -1)}

        step = slices_per_call(self.batch_size, height, width, device, self.cpu_batch_pixels)
        return in_batches(run, slices.shape[0], step)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args, **kwargs) -> torch.Tensor:
        if not isinstance(network, nn.Module):
            raise InputError(f"SliceReconstructionInferer needs a torch network, got {type(network).__name__}")
        check_loaded_weights(network, "mri")
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise InputError(f"expected a batch of single-channel volumes (B, 1, X, Y, Z), got shape {tuple(inputs.shape)}")
        meta = getattr(inputs, "meta", None) or {}
        network.eval()
        out = torch.zeros(inputs.shape, dtype=torch.float32)
        for b in range(inputs.shape[0]):
            vol = torch.as_tensor(inputs[b, 0]).movedim(self.axis, 0)
            # masks seeded by content: the key ScaleByPercentiled computed from the volume before
            # normalising (as MRIReconstructor does), else the normalised volume's own
            keys = meta.get("content_key")
            key = (keys if isinstance(keys, str) else keys[b]) if keys else content_key(inputs[b, 0])
            out[b, 0] = self.reconstruct_slices(network, vol, self.mask_key(key))["recon"].movedim(0, self.axis)
        return out


class MRIReconstructor(Reconstructor):
    """Reconstruct MRI volumes: fully sampled ones from their simulated Cartesian undersampling,
    prospectively undersampled fastMRI k-space as acquired.

    A fully sampled RAS volume is normalised by its percentile scale (as in training), cut into
    slices along `slice_axis`, undersampled with a deterministic per-slice mask (seeded by the
    data and slice), reconstructed in batches and scaled back. Outputs "recon", "zero_filled", "mask".

    Args:
        network: the reconstruction network (eval mode is set here).
        acceleration, center_fraction, mask_type, slice_axis, batch_size, amp: the simulated
            acquisition and batching (see `SliceReconstructionInferer`), used when no `inferer`
            is given.
        percentile: normalisation percentile (as in training).
        device: torch device.
        inferer: the `SliceReconstructionInferer` to use (configs/inference.yaml passes its
            `inferer`, the one MONAI Label calls), so both give the same reconstructions.
    """

    outputs = ("recon", "zero_filled", "mask")
    accepts_prospective = True  # fastMRI files with a mask are reconstructed as acquired

    def __init__(
        self,
        network: nn.Module,
        acceleration: float = 4,
        center_fraction: float | None = None,
        mask_type: str = "equispaced",
        slice_axis: int | str = "axial",
        percentile: float = 99.5,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        amp: bool = False,
        inferer: SliceReconstructionInferer | None = None,
    ) -> None:
        self.inferer = inferer or SliceReconstructionInferer(acceleration, center_fraction, mask_type, slice_axis,
                                                             batch_size, amp)
        self.network = network.eval()
        self.device = torch.device(device)
        self.amp = self.inferer.amp and self.device.type == "cuda"
        self.percentile = percentile

    def check(self, path: str, volume: np.ndarray, spacing=None) -> dict:
        """Slices of at least 8 x 8 pixels, no more undersampling than there are k-space lines, and a
        warning for a volume without contrast (no anatomy: the network has nothing to go on)."""
        axis = self.inferer.axis
        plane = [n for i, n in enumerate(volume.shape) if i != axis]
        if min(plane) < MIN_SLICE_PIXELS:
            raise InputError(f"{path}: slices of {plane[0]} x {plane[1]} pixels (slice_axis {axis}); at least "
                             f"{MIN_SLICE_PIXELS} x {MIN_SLICE_PIXELS} are needed")
        lines = plane[-1]  # phase encoding along the last in-plane axis (UndersampleKspaced masks W)
        accel = max(self.inferer.undersample.accelerations)
        if accel > lines:
            raise InputError(f"acceleration: {accel:g} is more than the {lines} k-space lines of {path} "
                             f"(at most {lines})")
        lo, hi = float(volume.min()), float(volume.max())
        if hi - lo <= 1e-6 * max(abs(hi), abs(lo), 1e-30):
            logger.warning("%s: constant volume (every voxel %g): there is no anatomy to reconstruct, and the "
                           "network's output will ripple around that value (tens of percent); not a meaningful "
                           "reconstruction", path, hi)
        return {}

    def _normalised_slices(self, volume: np.ndarray, axis: int, name: str) -> tuple[torch.Tensor, float]:
        """(S, H, W) float32 slices along `axis`, divided by the volume's percentile scale; the scale."""
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        scale = normalisation_scale(torch.from_numpy(volume), self.percentile, name)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, axis, 0)) / scale).float(), scale

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray, spacing=None, name: str = "volume",
                    kspace_grid: dict | None = None) -> dict[str, np.ndarray]:
        """A RAS volume (X, Y, Z) -> "recon", "zero_filled", "mask" of that shape; with
        `kspace_grid` (a prospectively undersampled acquisition) -> "recon", "zero_filled"."""
        if kspace_grid is not None:
            return self._reconstruct_prospective(kspace_grid, name)
        axis = self.inferer.axis
        vol, scale = self._normalised_slices(volume, axis, name)
        key = self.inferer.mask_key(content_key(volume))  # by the data and the seed, never by the file name
        outputs = self.inferer.reconstruct_slices(self.network.to(self.device), vol, key)
        return {key: np.moveaxis(value.numpy() * (scale if key != "mask" else 1.0), 0, axis)
                for key, value in outputs.items()}

    def _reconstruct_prospective(self, grid: dict, name: str) -> dict[str, np.ndarray]:
        """An acquisition undersampled at the scanner (fastMRI file with a mask), on its k-space
        grid, then cropped to the reconstruction size.

        `grid`: "zero_filled" (H, W, S) root-sum-of-squares image of the acquired coil data,
        "mask" (H, W) acquired k-space samples, "crop" (h, w). The data-consistency step keeps
        the acquired samples of the zero-filled magnitude image's k-space (the acquired k-space
        itself is multi-coil: its coil combination is not linear; the card measures what this
        costs). Returns "recon" and "zero_filled" (h, w, S)."""
        from bundle.data.fastmri import center_crop

        vol, scale = self._normalised_slices(grid["zero_filled"], 2, name)
        mask = torch.from_numpy(np.asarray(grid["mask"], dtype=np.float32))[None, None]  # (1, 1, H, W)
        network = self.network.to(self.device)

        def run(batch: slice) -> torch.Tensor:
            image = vol[batch, None]
            k = fft2c(image) * mask
            kspace = torch.cat([k.real, k.imag], 1)
            out = forward(network, image.to(self.device), self.amp, kspace=kspace.to(self.device),
                          mask=mask.to(self.device))
            return out[:, 0].cpu()

        step = slices_per_call(self.inferer.batch_size, vol.shape[-2], vol.shape[-1], self.device,
                               self.inferer.cpu_batch_pixels)
        recon = in_batches(run, vol.shape[0], step)
        crop = grid["crop"]
        return {key: np.moveaxis(center_crop(v, crop).numpy() * scale, 0, 2) for key, v in (("recon", recon), ("zero_filled", vol))}
