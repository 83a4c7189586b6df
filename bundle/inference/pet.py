"""PET inference: activity maps (NIfTI) scanned at a low count level, or given sinograms, or real
list-mode files, reconstructed by post-filtered OSEM (the baseline) and by the network on OSEM."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bundle.data.ctraw import SINOGRAM_SUFFIX
from bundle.data.datasets import slice_axis_index
from bundle.data.io import is_nifti, load_nifti_volume
from bundle.data.petlink import ListModeScan, listmode_sinograms, read_petlink
from bundle.data.readers import MR_SUFFIX, MU_SUFFIX
from bundle.errors import InputError, as_bool
from bundle.inference.batching import forward
from bundle.inference.runner import Reconstructor
from bundle.physics.pet import MU_SOFT_TISSUE, PETOperator, check_activity, check_mu, flat_background, osem
from bundle.transforms.base import content_key, slice_seed
from bundle.transforms.pet import PETAcquisition, activity_scale, anatomy_image

logger = logging.getLogger(__name__)


def pet_weights(bundle_root: str, anatomy) -> str:
    """The weights inference_pet.yaml loads by default: models/model_pet.pt, or with `anatomy`
    (pet_anatomy) models/model_pet_mr.pt, which does not ship (its candidate failed its rule): then
    one line saying how to make it instead of a bare "file not found"."""
    if not as_bool(anatomy, "pet_anatomy"):
        return os.path.join(bundle_root, "models", "model_pet.pt")
    path = os.path.join(bundle_root, "models", "model_pet_mr.pt")
    if not os.path.isfile(path):
        raise InputError(f"pet_anatomy: {path} does not ship (the MR-guided candidate did not pass its rule, "
                         "docs/README.md 'MR-guided PET'); train one with configs/train_pet_mr.yaml and give it "
                         "as --ckpt_path")
    return path


def companion(path: str, suffix: str) -> str | None:
    """`<name><suffix>.nii.gz` / `.nii` (or `<name><suffix>` for other suffixes) beside `<name>.nii(.gz)`."""
    base = path[: -len(".nii.gz")] if path.endswith(".nii.gz") else os.path.splitext(path)[0]
    names = [base + suffix + ".nii.gz", base + suffix + ".nii"] if suffix in (MU_SUFFIX, MR_SUFFIX) else [base + suffix]
    return next((n for n in names if os.path.exists(n)), None)


def body_outline(activity: np.ndarray) -> np.ndarray:
    """The body of (X, Y, Z) activity: above 1 % of the maximum after a 2-voxel smoothing, holes
    filled slice by slice (axial)."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(activity.astype(np.float32), 2.0)
    body = smooth > 0.01 * float(smooth.max())
    return np.stack([ndi.binary_fill_holes(body[..., k]) for k in range(body.shape[-1])], -1)


def recon_pixel(value) -> float | None:
    """The `recon_pixel_mm` option: a size in [0.1, 20] mm, or None / null / none / native (the
    input's own pixels; a command line gives the words as strings)."""
    from bundle.options import between

    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "native")):
        return None
    between(0.1, 20.0, False, False)("recon_pixel_mm", value)
    return float(value)


def dihedral_mean(fn, x: torch.Tensor) -> torch.Tensor:
    """The mean of fn over the 8 rotations by 90 degrees and reflections of x's last two axes,
    each output mapped back (a self-ensemble: Lim et al., EDSR, CVPR-W 2017). For PET these are
    symmetries of the scan (views over 180 degrees in a multiple of 4, a ring), and the network was
    trained with them as augmentation."""
    total = torch.zeros(())
    for flip in (False, True):
        t = x.flip(-1) if flip else x
        for k in range(4):
            y = torch.rot90(fn(torch.rot90(t, k, (-2, -1))), -k, (-2, -1))
            total = total + (y.flip(-1) if flip else y)
    return total / 8.0


class PETReconstructor(Reconstructor):
    """Reconstruct PET activity maps slice by slice (axial, RAS), and real list-mode scans.

    An activity map `<name>.nii.gz` (any activity unit, >= 0) is scanned with `acquisition` at its
    count fraction (Poisson noise seeded by the data and slice: runs repeat) using `<name>_mu.nii.gz`
    beside it as the 511 keV mu-map (same shape and affine, values in [0, 0.05] /mm), or, without
    one, a water-filled body outline. A given `<name>_sinogram.npy` (counts, (slices, views, bins)
    in this geometry, slices in RAS order) replaces the simulation: it is taken as prompts with the
    configured randoms + scatter fraction, and the activity map only gives the grid and the units
    (the calibration that makes OSEM's total match it). Outputs: "recon" (the network on the OSEM
    image, its total activity per slice rescaled to OSEM's, then `em_iterations` EM passes started
    from it: data consistency with the counts) and "osem" (the post-filtered OSEM baseline), in
    the input's geometry and activity units.

    An MR-guided network (`guide_channels` 1, `models/model_pet_mr.pt`) also reads `<name>_mr.nii.gz`,
    the co-registered T1 (same shape and affine as the activity map), and takes it as its second
    input channel (`bundle.transforms.pet.anatomy_image` scale); without one the input stops with
    one line. List-mode files carry no T1: they need the PET-only network.

    The scan and both reconstructions run on a grid of `recon_pixel_mm` pixels (2 mm: the network
    was trained on 2 mm slices, and scanners reconstruct brains on 2 to 2.7 mm): an activity map of
    other in-plane pixels (a 1 mm BrainWeb phantom, say) is resampled to it slice by slice (its
    mu-map and T1 with it), and the outputs are resampled back onto the input's grid with each
    slice's activity integral (sum x pixel area) kept. Why: on a 1 mm map scanned and reconstructed
    at 1 mm, the network (which sees structures twice their trained size in pixels) scored 2.2 dB
    below OSEM where at 2 mm it is above it. None: the input's own pixels. A given sinogram is on
    the reconstruction grid's geometry.

    A list-mode file (`bundle.data.petlink`) is binned to one 2D sinogram (all ring pairs), gaps
    filled, arc-corrected, and reconstructed without attenuation or normalisation (none are in the
    file): outputs on a `listmode_grid` of `listmode_pixel_mm` pixels.
    """

    outputs = ("recon", "osem")
    dicom_outputs = ("recon",)

    def __init__(self, network: nn.Module, acquisition: PETAcquisition, slice_axis: int | str = "axial",
                 batch_size: int = 8, device: str | torch.device = "cpu", amp: bool = False, progress: bool = True,
                 listmode_grid: Sequence[int] = (160, 160), listmode_pixel_mm: float = 2.0,
                 ckpt_path: str | None = None, em_iterations: int = 1, recon_pixel_mm: float | None = 2.0,
                 self_ensemble: bool = False) -> None:
        self.network = network.eval()
        self.recon_pixel_mm = recon_pixel(recon_pixel_mm)
        self.acquisition = acquisition
        self.axis = slice_axis_index(slice_axis)
        # each slice as (rows, columns) = (the second, the first in-plane RAS axis), as in training
        self.cols, self.rows = (a for a in range(3) if a != self.axis)
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.progress = progress
        self.listmode_grid = tuple(int(v) for v in listmode_grid)
        self.listmode_pixel_mm = float(listmode_pixel_mm)
        self.ckpt_path = ckpt_path
        if not 0 <= int(em_iterations) <= 100:
            raise InputError(f"em_iterations must be in [0, 100], got {em_iterations!r}")
        self.em_iterations = int(em_iterations)
        self.self_ensemble = as_bool(self_ensemble, "pet_self_ensemble")

    def finish(self, op: PETOperator, counts: torch.Tensor, background: torch.Tensor, net: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """EM data consistency after the network: `em_iterations` OSEM passes started from its
        image (positive, counts kept; 0: the network's image as it is)."""
        if self.em_iterations == 0:
            return net
        start = net.to(counts.device).clamp_min(1e-6 * float(net.max()))
        with torch.no_grad():
            return osem(op, counts, background, self.em_iterations, self.acquisition.subsets, start=start,
                        mask=mask).cpu()

    # ---- activity maps ----
    def check(self, path: str, volume: np.ndarray, spacing: Sequence[float]) -> dict:
        check_activity(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)), path)
        sy, sx = spacing[self.rows], spacing[self.cols]
        if abs(sy - sx) > 1e-3 * max(sy, sx):
            raise InputError(f"{path}: in-plane voxels of {sx:g} x {sy:g} mm; PET slices need square pixels")
        mu_path = companion(path, MU_SUFFIX) if is_nifti(path) else None
        if mu_path is not None:
            mu = self._read_mu(mu_path, path)
        else:
            mu = np.where(body_outline(np.asarray(volume)), MU_SOFT_TISSUE, 0.0).astype(np.float32)
        extra: dict = {"mu": mu, "sinogram": None}
        if self.guided:
            mr_path = companion(path, MR_SUFFIX) if is_nifti(path) else None
            if mr_path is None:
                raise InputError(f"{path}: the MR-guided PET model needs its co-registered T1 beside it "
                                 f"(<name>{MR_SUFFIX}.nii.gz); without one use the PET-only model (pet_anatomy false)")
            extra["mr"] = self._read_companion(mr_path, path, "T1")
            anatomy_image(extra["mr"], mr_path)  # checked before anything is written; scaled in reconstruct
        sino_path = companion(path, SINOGRAM_SUFFIX) if is_nifti(path) else None
        if sino_path is not None:
            extra["sinogram"] = self._read_sinogram(sino_path, volume.shape, float(sx))
        return extra

    @property
    def guided(self) -> bool:
        """Whether the network takes an anatomical image as a second channel (the MR-guided model)."""
        return int(getattr(self.network, "guide_channels", 0)) > 0

    def _read_mu(self, mu_path: str, path: str) -> np.ndarray:
        mu = self._read_companion(mu_path, path, "mu-map")
        check_mu(torch.from_numpy(mu), mu_path)
        return mu

    def _read_companion(self, comp_path: str, path: str, what: str) -> np.ndarray:
        """A volume beside the activity map, checked to be on its grid, in the activity map's RAS axes."""
        from nibabel.orientations import apply_orientation, io_orientation

        act_img, _ = load_nifti_volume(path)
        img, vol = load_nifti_volume(comp_path)  # readable, 3D, finite: checked there
        if vol.shape != tuple(act_img.shape[:3]):
            raise InputError(f"{comp_path}: {what} of shape {vol.shape}, activity map {tuple(act_img.shape[:3])}")
        if not np.allclose(img.affine, act_img.affine, atol=1e-3):
            raise InputError(f"{comp_path}: its affine differs from the activity map's (another grid)")
        return np.ascontiguousarray(apply_orientation(vol, io_orientation(act_img.affine)))

    def recon_grid(self, shape: Sequence[int], pixel_mm: float) -> tuple[tuple[int, int], float]:
        """The (rows, columns) and pixel size of the grid that a slice of `shape` with `pixel_mm`
        pixels is scanned and reconstructed on: the same, or the field of view in `recon_pixel_mm`
        pixels (rounded; the pixel kept at `recon_pixel_mm`)."""
        h, w = int(shape[0]), int(shape[1])
        p = self.recon_pixel_mm
        if p is None or abs(pixel_mm - p) <= 1e-3 * p:
            return (h, w), float(pixel_mm)
        return (max(1, round(h * pixel_mm / p)), max(1, round(w * pixel_mm / p))), p

    @staticmethod
    def resample(slices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """(Z, H, W) slices onto (Z, *shape): bilinear, antialiased when shrinking (the mean value
        of a region is kept, as a concentration should be)."""
        if tuple(slices.shape[-2:]) == tuple(shape):
            return slices
        shrink = shape[0] < slices.shape[-2] or shape[1] < slices.shape[-1]
        return torch.nn.functional.interpolate(slices[:, None].float(), size=tuple(int(v) for v in shape), mode="bilinear",
                                               align_corners=False, antialias=shrink)[:, 0]

    def _read_sinogram(self, sino_path: str, shape: Sequence[int], pixel_mm: float) -> np.ndarray:
        try:
            sino = np.load(sino_path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{sino_path}: not a readable .npy array ({err})") from None
        n = shape[self.axis]
        grid, p = self.recon_grid((shape[self.rows], shape[self.cols]), pixel_mm)
        expected = (n, *self.acquisition.projector(grid, p).geom.sinogram_shape)
        if sino.shape != expected:
            raise InputError(f"{sino_path}: sinogram of shape {sino.shape}; this volume and geometry need {expected} "
                             f"(slices, views, bins; the reconstruction grid: {grid[0]} x {grid[1]} pixels of {p:g} mm)")
        if not np.isfinite(sino).all() or float(sino.min()) < 0:
            raise InputError(f"{sino_path}: counts must be finite and non-negative")
        return sino.astype(np.float32)

    def _slices(self, volume: np.ndarray) -> torch.Tensor:
        """(X, Y, Z) RAS -> (slices, rows, columns) along the slice axis."""
        return torch.from_numpy(np.ascontiguousarray(
            np.moveaxis(volume, (self.axis, self.rows, self.cols), (0, 1, 2)), dtype=np.float32))

    def _unslice(self, slices: torch.Tensor) -> np.ndarray:
        """The inverse of `_slices`."""
        return np.moveaxis(slices.cpu().numpy(), (0, 1, 2), (self.axis, self.rows, self.cols))

    def network_on(self, image: torch.Tensor, body: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        """The network on (B, H, W) OSEM images: scaled by their mean in `body`, back to activity,
        non-negative, each slice's total set to the OSEM image's. `guide`: (B, H, W) T1 slices on
        the `anatomy_image` scale, the MR-guided network's second channel."""
        x = image[:, None].to(self.device)
        s = activity_scale(x, body[:, None].to(self.device).float())
        net_in = x / s
        if self.guided:
            if guide is None:
                raise InputError("the MR-guided PET model needs the T1 (<name>_mr.nii.gz); list-mode and "
                                 "inputs without one need the PET-only model (pet_anatomy false)")
            net_in = torch.cat([net_in, guide[:, None].to(self.device).float()], 1)
        def run(t: torch.Tensor) -> torch.Tensor:
            return forward(self.network, t, self.amp)

        with torch.no_grad():
            out = (dihedral_mean(run, net_in) if self.self_ensemble else run(net_in)).clamp_min(0) * s
        total_in, total_out = x.sum((-2, -1), keepdim=True), out.sum((-2, -1), keepdim=True)
        return (out * total_in / total_out.clamp_min(1e-12))[:, 0].cpu()

    def _log_baseline(self, name: str, level: float) -> None:
        logger.info("%s: OSEM baseline %d iterations, %g mm post-filter (count level %.3g)", name,
                    *self.acquisition.baseline_setting(level), level)

    def reconstruct(self, volume: np.ndarray, spacing: Sequence[float], name: str, mu: np.ndarray,
                    sinogram: np.ndarray | None = None, mr: np.ndarray | None = None) -> dict[str, np.ndarray]:
        acq = self.acquisition
        act_in = self._slices(volume)
        grid, pixel_mm = self.recon_grid(act_in.shape[-2:], float(spacing[self.cols]))
        act, mus = self.resample(act_in, grid), self.resample(self._slices(mu), grid)
        guide = self.resample(self._slices(anatomy_image(mr)), grid) if mr is not None else None
        recon, base = torch.zeros_like(act), torch.zeros_like(act)
        todo = [z for z in range(act.shape[0]) if float(act[z].max()) > 0]
        key = content_key(volume)  # the Poisson noise: seeded by the data, never by the file name
        # the baseline's count level: the simulated one, or a given sinogram's mean trues per slice
        level = None if sinogram is None or not todo else float(
            np.asarray(sinogram[todo], dtype=np.float64).sum((-2, -1)).mean()
            / (1.0 + acq.background_fraction) / acq.full_counts)
        self._log_baseline(name, acq.count_fraction if level is None else level)
        steps = range(0, len(todo), self.batch_size)
        for start in tqdm(steps, desc=f"{name}: PET slices", unit="batch", disable=not self.progress, leave=False):
            idx = todo[start:start + self.batch_size]
            a, m = act[idx].to(self.device), mus[idx].to(self.device)
            if sinogram is None:
                gens = [torch.Generator().manual_seed(slice_seed(key, z, "pet")) for z in idx]
                op, counts, bg = acq.simulate(a, m, pixel_mm, generators=gens)
            else:
                counts = torch.from_numpy(sinogram[idx]).to(self.device)
                op = acq.system(m, pixel_mm)
                trues = counts.sum((-2, -1), keepdim=True) / (1.0 + acq.background_fraction)
                bg = flat_background(acq.calibrate(op, a, trues), acq.background_fraction)
            with torch.no_grad():
                image = acq.reconstruct(op, counts, bg)
                base[idx] = acq.baseline(op, counts, bg, level=level).cpu()
            recon[idx] = self.finish(op, counts, bg, self.network_on(image, m > 0, None if guide is None else guide[idx]))
        return {"recon": self._unslice(self.back_to_input(recon, act_in.shape[-2:])),
                "osem": self._unslice(self.back_to_input(base, act_in.shape[-2:]))}

    def back_to_input(self, slices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Reconstruction-grid slices onto the input's grid (`resample`), each slice's activity
        integral kept (sum x pixel area; the two grids span the same field of view, so the pixel
        areas are in the ratio of the pixel counts)."""
        if tuple(slices.shape[-2:]) == tuple(shape):
            return slices
        out = self.resample(slices, shape).clamp_min(0)
        area = (slices.shape[-2] * slices.shape[-1]) / (int(shape[0]) * int(shape[1]))  # fine pixel / coarse pixel
        wanted = slices.sum((-2, -1), keepdim=True) / area
        return out * (wanted / out.sum((-2, -1), keepdim=True).clamp_min(1e-12))

    # ---- list-mode ----
    def load(self) -> None:
        """Load the network's weights from `ckpt_path` once (the config's run step, and the runner
        before a list-mode input, e.g. when a tool builds the reconstructor without that step)."""
        if self.ckpt_path:
            from bundle.networks import load_checkpoint

            load_checkpoint(self.network, self.ckpt_path, self.device, "pet")
            self.network.eval()
            self.ckpt_path = None

    def read_scan(self, path: str) -> ListModeScan:
        if self.guided:  # before anything is read or written
            raise InputError(f"{path}: a list-mode file carries no T1 for the MR-guided PET model; "
                             "reconstruct it with the PET-only model (pet_anatomy false)")
        return read_petlink(path)

    def affine(self, scan: ListModeScan) -> np.ndarray:
        p = self.listmode_pixel_mm
        h, w = self.listmode_grid
        aff = np.diag([p, p, p, 1.0])
        aff[:3, 3] = [-(w - 1) / 2 * p, -(h - 1) / 2 * p, 0.0]
        return aff

    def reconstruct_scan(self, scan: ListModeScan, name: str) -> dict[str, np.ndarray]:
        """A list-mode scan -> {"recon", "osem"} as (W, H, 1) arrays (RAS-like x, y; one slice)."""
        acq = self.acquisition
        op = acq.base_system(self.listmode_grid, self.listmode_pixel_mm, views=scan.views)
        prompts, randoms = listmode_sinograms(scan, op.geom.n_det, op.geom.det_spacing)
        y = torch.from_numpy(prompts).float()[None]
        r = torch.from_numpy(randoms).float()[None]
        h, w = self.listmode_grid
        yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
        fov = ((yy**2 + xx**2).sqrt() * self.listmode_pixel_mm <= scan.radius_mm * 0.85).float()
        with torch.no_grad():
            image = acq.reconstruct(op, y, r, mask=fov)
            level = float((y.sum() - r.sum()).clamp_min(0.0)) / acq.full_counts  # trues (+ scatter) in the one slice
            self._log_baseline(name, level)
            base = acq.baseline(op, y, r, mask=fov, level=level)
        body = torch.from_numpy(body_outline(image[0].numpy()[..., None])[..., 0])[None]
        recon = self.finish(op, y, r, self.network_on(image, body), fov)
        return {"recon": recon[0].T.numpy()[..., None], "osem": base[0].T.numpy()[..., None]}
