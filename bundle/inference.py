"""Inference on 3D NIfTI volumes: simulate the acquisition slice by slice, reconstruct, and write
NIfTI in the input's geometry."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from torch import nn
from tqdm import tqdm

from bundle.data import slice_axis_index
from bundle.errors import InputError
from bundle.io import is_nifti, load_nifti_volume, save_nifti_like
from bundle.transforms import UndersampleKspaced, percentile_scale

logger = logging.getLogger(__name__)


def find_volumes(input_dir: str) -> list[str]:
    """All NIfTI files in `input_dir`, sorted; an `InputError` if there are none."""
    if not os.path.isdir(input_dir):
        raise InputError(f"input_dir {input_dir}: no such directory")
    files = sorted(f for f in glob.glob(os.path.join(input_dir, "*")) if os.path.isfile(f) and is_nifti(f))
    if not files:
        raise InputError(f"input_dir {input_dir}: no NIfTI volumes (.nii, .nii.gz) found")
    return files


def resolve_inputs(input_dir: str, datalist: str | None = None, key: str = "test") -> list[str]:
    """The volumes to reconstruct: every NIfTI file in `input_dir`, or the `key` list of a MONAI
    datalist whose paths are relative to `input_dir`."""
    if datalist is None:
        return find_volumes(input_dir)
    from bundle.data import load_datalist

    return [item["image"] for item in load_datalist(datalist, input_dir, key)]


def ras_spacing(img: nib.Nifti1Image, to_ras: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) of `img` along the axes of its RAS-reoriented array."""
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    out = [1.0, 1.0, 1.0]
    for i, (axis, _) in enumerate(to_ras):
        out[int(axis)] = zooms[i]
    return tuple(out)


def output_stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class VolumeReconstructor:
    """Reconstruct fully sampled 3D volumes from simulated Cartesian undersampling.

    The volume is reoriented to RAS (as `Orientationd` does in training; done with nibabel here so
    the output keeps the input's full NIfTI header), normalised by its percentile scale, cut into
    slices along `slice_axis`, undersampled with a deterministic per-slice mask, reconstructed in
    batches, then scaled back and returned to the input's orientation.

    Args:
        network: the reconstruction network (eval mode is set here).
        acceleration: undersampling factor.
        center_fraction: fully sampled centre; default 0.32 / acceleration (fastMRI).
        mask_type: "equispaced" or "random".
        slice_axis: "axial", "coronal", "sagittal" or 0, 1, 2 (RAS).
        percentile: normalisation percentile (as in training).
        batch_size: slices per forward pass.
        device: torch device.
        amp: autocast on CUDA.
        progress: progress bar over volumes.
    """

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
        progress: bool = True,
    ) -> None:
        self.undersample = UndersampleKspaced(
            keys="image",
            accelerations=[acceleration],
            center_fractions=None if center_fraction is None else [center_fraction],
            mask_type=mask_type,
            deterministic=True,
        )
        self._set_runtime(network, slice_axis, batch_size, device, amp, progress)
        self.percentile = percentile

    def _set_runtime(self, network: nn.Module, slice_axis, batch_size: int, device, amp: bool, progress: bool) -> None:
        """What every reconstructor shares: the network in eval mode, slicing axis, batch, device,
        autocast (CUDA only) and progress bar."""
        self.network = network.eval()
        self.axis = slice_axis_index(slice_axis)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.progress = progress

    output_suffixes = ("_recon", "_zero_filled", "_mask")

    def check(self, path: str, img: nib.Nifti1Image, data: np.ndarray) -> None:
        """Checks of an input volume beyond `load_nifti_volume`'s, before anything is written."""

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray, name: str) -> dict[str, np.ndarray]:
        """Reconstruct a RAS volume (X, Y, Z). Returns "recon", "zero_filled", "mask" of that shape."""
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        scale = percentile_scale(torch.from_numpy(volume), self.percentile)
        if scale <= 0:
            raise InputError(f"{name}: no positive intensity to normalise")
        vol = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, self.axis, 0)) / scale).float()  # (S, H, W)
        outputs = {k: torch.zeros_like(vol) for k in ("recon", "zero_filled", "mask")}
        for start in range(0, vol.shape[0], self.batch_size):
            items = [
                self.undersample({"image": vol[i][None], "slice_id": f"{name}:{i}"})
                for i in range(start, min(start + self.batch_size, vol.shape[0]))
            ]
            image = torch.stack([d["image"] for d in items]).to(self.device)
            kspace = torch.stack([d["kspace"] for d in items]).to(self.device)
            mask = torch.stack([d["mask"] for d in items]).to(self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                pred = self.network(image, kspace=kspace, mask=mask)
            stop = start + len(items)
            outputs["recon"][start:stop] = pred[:, 0].float().cpu()
            outputs["zero_filled"][start:stop] = image[:, 0].cpu()
            outputs["mask"][start:stop] = mask[:, 0].cpu().expand(-1, vol.shape[1], -1)
        result = {}
        for key, value in outputs.items():
            arr = value.numpy() * (scale if key != "mask" else 1.0)
            result[key] = np.moveaxis(arr, 0, self.axis)
        return result

    def run(self, inputs: Sequence[str] | str, output_dir: str) -> list[str]:
        """Reconstruct every volume in `inputs` (a folder or a list of NIfTI files) into `output_dir`:
        `<name>_recon.nii.gz`, `<name>_zero_filled.nii.gz` and `<name>_mask.nii.gz`.

        Every input is checked before anything is written. Returns the written paths.
        """
        files = find_volumes(inputs) if isinstance(inputs, str) else list(inputs)
        if not files:
            raise InputError("no input volumes given")
        checked = [(f, *load_nifti_volume(f)) for f in files]  # all errors before any output
        for path, img, data in checked:
            self.check(path, img, data)
        out_abs = os.path.abspath(output_dir)
        for f in files:
            if os.path.dirname(os.path.abspath(f)) == out_abs and output_stem(f).endswith(self.output_suffixes):
                raise InputError(f"{f}: looks like an output of this bundle; use another input_dir")
        os.makedirs(output_dir, exist_ok=True)
        written = []
        for path, img, data in tqdm(checked, desc="reconstructing", unit="vol", disable=not self.progress):
            to_ras = io_orientation(img.affine)
            from_ras = ornt_transform(axcodes2ornt(("R", "A", "S")), to_ras)
            self.spacing = ras_spacing(img, to_ras)
            result = self.reconstruct(apply_orientation(data, to_ras), output_stem(path))
            stem = output_stem(path)
            for key, value in result.items():
                out = os.path.join(output_dir, f"{stem}_{key}.nii.gz")
                save_nifti_like(apply_orientation(value, from_ras), img, out)
                written.append(out)
            logger.info("%s -> %s_{%s}.nii.gz", path, os.path.join(output_dir, stem), ",".join(result))
        return written
