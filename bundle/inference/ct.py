"""CT inference on 3D volumes in HU: simulate the configured scan slice by slice (or take a given
sinogram), reconstruct with FBP and the network, then make the network's image consistent with the
scan."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn
from tqdm import tqdm

from bundle.data.ctraw import SINOGRAM_SUFFIX
from bundle.data.datasets import slice_axis_index
from bundle.errors import InputError, check_whole_number
from bundle.inference.batching import CPU_BATCH_PIXELS, check_cpu_batch_pixels, forward, in_batches, slices_per_call
from bundle.inference.runner import Reconstructor
from bundle.transforms.base import content_key, slice_seed
from bundle.transforms.ct import (
    HU_WINDOW,
    CTAcquisition,
    CTDataConsistency,
    check_hu,
    check_hu_mode,
    check_hu_window,
    hu_to_unit,
    unit_to_hu,
)

# On a GPU, data consistency solves the slices of several network batches at once, up to this many
# pixels (128 slices of 512 x 512): its sparse products run faster on more columns (measured in
# docs/benchmarks.md). On the CPU the cost is per slice, and each network batch is solved as it comes.
GPU_CONSISTENCY_PIXELS = 2**25


class CTConsistencyInferer(Inferer):
    """A MONAI inferer for CT evaluation: the network on the FBP image, then data consistency with
    the slice's own scan (`CTDataConsistency`) when the batch brings `sinogram` ((B, V, D)) and
    `pixel_spacing` ((B, 2) mm), e.g. through `monai.engines.PrepareBatchExtraInput`."""

    def __init__(self, consistency: CTDataConsistency | None = None) -> None:
        super().__init__()
        self.consistency = consistency

    def __call__(self, inputs: torch.Tensor, network, *args, sinogram=None, pixel_spacing=None, **kwargs):
        pred = network(inputs, *args, **kwargs)
        if self.consistency is None or self.consistency.iterations == 0 or sinogram is None:
            return pred
        if pixel_spacing is None:
            raise ValueError("CT data consistency needs the slices' pixel_spacing beside their sinogram")
        spacing = torch.as_tensor(pixel_spacing, dtype=torch.float64).reshape(-1, 2).tolist()
        with torch.autocast(pred.device.type, enabled=False):
            if all(sp == spacing[0] for sp in spacing):  # one geometry: one batched solve
                out = self.consistency(pred[:, 0].float(), sinogram.to(pred.device), spacing[0])
            else:
                out = torch.stack([self.consistency(p[0].float(), y.to(pred.device), sp)
                                   for p, y, sp in zip(pred, sinogram, spacing)])
        return out[:, None].to(pred.dtype)


class CTReconstructor(Reconstructor):
    """Reconstruct CT volumes in HU from a simulated sparse-view / low-dose scan, or a given one.

    Each slice along `slice_axis` (of the RAS volume) is scanned with `acquisition` using the
    volume's in-plane spacing (noise seeded by the data and slice, so runs repeat), then reconstructed
    by FBP and by the network, then made consistent with the scan. A given scan replaces the
    simulation: `<name>_sinogram.npy` beside `<name>.nii.gz` (float line integrals, shape
    (slices, views, detectors), slices in the volume's RAS order along `slice_axis`, this bundle's
    parallel-beam geometry); the volume then only gives the output grid. Outputs "recon" (network,
    then data consistency) and "fbp", in HU clipped to `window`.

    Args:
        network: the network (FBP image in, image out, on the [0, 1] scale of `window`).
        acquisition: the simulated scan.
        slice_axis: "axial", "coronal", "sagittal" or 0, 1, 2 (RAS).
        window: the HU window of the [0, 1] scale (as in training).
        hu_check: what to do with a volume that does not look like HU: "error", "warn" or "off".
        batch_size: slices per forward pass.
        device: torch device.
        amp: autocast on CUDA.
        progress: a progress bar over the slices of each volume.
        consistency: data consistency with the scan after the network (None: off).
        cpu_batch_pixels: on the CPU, the network sees at most this many pixels per call (faster
            there: `bundle.inference.batching.CPU_BATCH_PIXELS`); the scan simulation, its noise and
            the FBP do not depend on it, the network's output only up to float rounding.
        consistency_batch: slices per data-consistency solve (whole network batches are added until
            it is reached). None: each network batch on the CPU; on a GPU as many slices as fit in
            `GPU_CONSISTENCY_PIXELS` (faster there). The result depends on it only up to float rounding.
    """

    outputs = ("recon", "fbp")

    def __init__(
        self,
        network: nn.Module,
        acquisition: CTAcquisition,
        slice_axis: int | str = "axial",
        window: Sequence[float] = HU_WINDOW,
        hu_check: str = "error",
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        amp: bool = False,
        progress: bool = True,
        consistency: CTDataConsistency | None = None,
        cpu_batch_pixels: int = CPU_BATCH_PIXELS,
        consistency_batch: int | None = None,
    ) -> None:
        self.network = network.eval()
        self.axis = slice_axis_index(slice_axis)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.progress = progress
        self.cpu_batch_pixels = check_cpu_batch_pixels(cpu_batch_pixels)
        if consistency_batch is not None:
            check_whole_number(consistency_batch, "consistency_batch (dc_batch in configs/inference_ct.yaml) must be a "
                                                  "positive integer or null")
        self.consistency_batch = consistency_batch
        self.acquisition = acquisition
        self.consistency = consistency
        self.window = check_hu_window(window)
        self.hu_check = check_hu_mode(hu_check)

    def check(self, path: str, volume: np.ndarray, spacing: Sequence[float]) -> dict:
        """The HU check, and the given sinogram beside `path` if there is one: {"sinogram": ...}."""
        extremes = torch.tensor([float(volume.min()), float(volume.max())])  # all the HU check reads
        check_hu(extremes, path, self.hu_check)
        sino_path = path[: -len(".nii.gz")] if path.endswith(".nii.gz") else os.path.splitext(path)[0]
        sino_path += SINOGRAM_SUFFIX
        if not os.path.exists(sino_path):
            return {}
        return {"sinogram": self._load_sinogram(sino_path, volume.shape, spacing)}

    def _load_sinogram(self, sino_path: str, shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
        """A given sinogram (slices, views, detectors) of line integrals, checked against the
        geometry of the RAS volume beside it (its slices, in-plane shape and spacing)."""
        try:
            sino = np.load(sino_path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{sino_path}: cannot be read as a .npy array ({type(e).__name__})") from None
        if not np.issubdtype(sino.dtype, np.floating):
            raise InputError(f"{sino_path}: expected floating-point line integrals, got dtype {sino.dtype}")
        in_plane = [s for i, s in enumerate(shape) if i != self.axis]
        geom = self.acquisition.geometry(in_plane, [s for i, s in enumerate(spacing) if i != self.axis])
        expected = (shape[self.axis], *geom.sinogram_shape)
        if sino.shape != expected:
            raise InputError(f"{sino_path}: sinogram of shape {sino.shape} does not match the geometry: expected "
                             f"(slices, views, detectors) = {expected}")
        if not np.isfinite(sino).all():
            raise InputError(f"{sino_path}: contains NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(sino, dtype=np.float32))

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray, spacing: Sequence[float], name: str,
                    sinogram: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """A RAS volume (X, Y, Z) in HU with its voxel spacing (mm) -> "recon" and "fbp" in HU,
        same shape. `sinogram`: the measured scan (slices, views, detectors) instead of a
        simulated one.

        Each batch of slices is converted to and from HU on the device and copied straight into
        slice-ordered output arrays (returned as views in the input's axis order): whole-volume
        passes and strided writes on the CPU cost more than the reconstruction on a GPU.
        With data consistency, the network outputs of several batches may wait for one solve
        (`consistency_batch`); the FBP output is written batch by batch.
        """
        slices = np.moveaxis(volume, self.axis, 0)  # a view
        in_plane = [float(s) for i, s in enumerate(spacing) if i != self.axis]
        out = {key: np.empty(slices.shape, dtype=np.float32) for key in ("recon", "fbp")}
        geom = self.acquisition.geometry(slices.shape[-2:], in_plane)
        network = self.network.to(self.device)
        key = content_key(volume)  # the noise: seeded by the data, never by the file name
        bar = tqdm(total=slices.shape[0], desc=f"{name}", unit="slice", leave=False, disable=not self.progress)
        per_solve = self._consistency_slices(*slices.shape[-2:])
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (start, network output, scan) awaiting consistency
        for start in range(0, slices.shape[0], self.batch_size):
            stop = min(start + self.batch_size, slices.shape[0])
            if sinogram is not None:  # a measured or precomputed scan: FBP of it, no simulation
                scan = sinogram[start:stop].to(self.device)
            else:  # scan simulation and FBP on the device (noise drawn on the CPU, same on any device)
                hu = torch.from_numpy(np.ascontiguousarray(slices[start:stop])).to(self.device).float()
                generator = torch.Generator().manual_seed(slice_seed(f"{key}:{start}", "ct", self.acquisition.views))
                scan, _ = self.acquisition.sinogram(hu_to_unit(hu, self.window), in_plane, generator)
            image = self.acquisition.reconstruct(scan, geom)[:, None]
            step = slices_per_call(len(image), image.shape[-2], image.shape[-1], self.device, self.cpu_batch_pixels)
            pred = in_batches(partial(self._network_batch, network, image), len(image), step)
            self._write(out["fbp"], start, image[:, 0])
            pending.append((start, pred, scan))
            if stop - pending[0][0] >= per_solve or stop == slices.shape[0]:
                first = pending[0][0]
                pred = torch.cat([p for _, p, _ in pending])
                if self.consistency is not None:
                    pred = self.consistency(pred, torch.cat([y for _, _, y in pending]), in_plane)
                self._write(out["recon"], first, pred)
                pending.clear()
                bar.update(stop - first)
        bar.close()
        return {key: np.moveaxis(value, 0, self.axis) for key, value in out.items()}

    def _network_batch(self, network: nn.Module, image: torch.Tensor, batch: slice) -> torch.Tensor:
        return forward(network, image[batch], self.amp)[:, 0]

    def _write(self, out: np.ndarray, start: int, unit: torch.Tensor) -> None:
        """Slices [start, start + len(unit)) of a slice-ordered output: `unit` in HU, clipped to the window."""
        torch.from_numpy(out[start : start + len(unit)]).copy_(unit_to_hu(unit.clamp(0.0, 1.0), self.window))

    def _consistency_slices(self, height: int, width: int) -> int:
        """Slices per data-consistency solve (at least one network batch is always solved whole)."""
        if self.consistency is None:
            return 1
        if self.consistency_batch is not None:
            return self.consistency_batch
        if self.device.type == "cpu":
            return self.batch_size
        return max(1, GPU_CONSISTENCY_PIXELS // (height * width))
