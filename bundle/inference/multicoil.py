"""Multi-coil MRI inference: raw k-space (fastMRI, ISMRMRD, TWIX, BART) reconstructed on its whole
grid by the unrolled network joined with L1-wavelet PICS on the object (`pics_mode`: PICS with the
network's image as a second prior up to an effective 5.66x, an average above; `pics_blend`,
`pics_region`; each chosen on validation), or by a classical baseline alone, slice by slice.

A fully sampled file is undersampled retrospectively with one Cartesian mask for the whole file
(every coil and slice, as a scanner does; seeded by the k-space itself, so reruns and renamed copies agree); a file with
a mask (or with k-space that is zero off the acquired samples) is reconstructed as acquired.
Outputs, arrays (H, W, slices) in the axes of the k-space (H readout, W phase encoding) on the
RSS scale of the data, cropped only to the header's reconstruction size:
`recon`, `zero_filled` (RSS of the acquired data), `mask` ((H, W, 1) acquired samples on the whole
k-space grid, not cropped) and, with
`write_maps`, `maps` ((H, W, slices, coils) complex sensitivities: the ESPIRiT or given maps the
network or a classical method used, or those a learned-maps network made).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from bundle.data.fastmri import center_crop
from bundle.data.rawkspace import RawKspace
from bundle.errors import InputError
from bundle.options import check_options, is_auto
from bundle.parallel_imaging import (
    ESPIRIT_CALIBRATION,
    METHODS,
    PICS_REGION,
    check_solver,
    classical,
    combine_with_pics,
    sensitivities,
)
from bundle.physics.mri import cartesian_mask, check_acceleration, check_mask_type, default_center_fraction, ifft2c
from bundle.physics.mri_sense import acs_window, rss
from bundle.transforms.base import content_key, slice_seed
from bundle.varnet import VarNet

MULTICOIL_METHODS = ("varnet", *METHODS)


class MultiCoilReconstructor:
    """Reconstruct raw multi-coil k-space (`bundle.data.rawkspace.RawKspace`).

    Args:
        network: the multi-coil network (`bundle.varnet.VarNet`), for method "varnet".
        acceleration, center_fraction, mask_type: the retrospective undersampling of fully
            sampled files (fastMRI conventions: centre 0.32 / acceleration).
        method: "varnet" (the network), or a classical baseline: "zero_filled", "cg_sense",
            "pics" (L1-wavelet, SigPy), with ESPIRiT maps unless the file gives maps.
        weight: the baseline's regularisation weight (on k-space divided by its norm per pixel).
        pics_mode: for "varnet", how L1-wavelet PICS (SigPy, the same maps) joins the network:
            "joint" (PICS with the network's image as a second prior, one data-consistent
            solution, `bundle.parallel_imaging.network_pics`), "average" (the two images
            averaged), or "auto" (shipped: joint up to an effective 5.66x, average above;
            `pics_mode_for`).
        pics_blend: the reconstruction is (1 - pics_blend) x the network + pics_blend x that
            image; "auto" (shipped): 1 for the joint, and for the average by the mask's effective
            acceleration as chosen on validation (`pics_blend_for`: 0.4 up to 5.66x, 0.2
            above); 0: the network alone, and no PICS time.
        pics_weight: PICS's wavelet weight, None or "auto" for the one tuned on validation for the
            mask's acceleration (`bundle.parallel_imaging.pics_weight_for`).
        pics_region: "object" (shipped): PICS only where the object is
            (`bundle.parallel_imaging.object_support` of the network's image), the network alone in
            the background; "all": everywhere (0.14).
        write_maps: also write the sensitivities as `<name>_maps.nii.gz`.
        solver: the SigPy solve's iterations and step, a key of `bundle.parallel_imaging.SOLVERS`
            ("shipped": 30 iterations, step from a bound; "0.18": 100 after 30 power iterations,
            for the benchmark's side-by-side timing).
        espirit_calibration: ESPIRiT's calibration region when the file has no maps: "window"
            (shipped since 0.23: the whole fully sampled region), "square" (SigPy's centred
            square, what the network was trained with; shipped 0.12-0.22) or "window24".
        device: torch device of the network.
        progress: a progress bar over the slices of each file.
    """

    outputs: tuple[str, ...] = ("recon", "zero_filled", "mask")

    def __init__(self, network: VarNet | None = None, acceleration: float = 4, center_fraction: float | None = None,
                 mask_type: str = "equispaced", method: str = "varnet", weight: float = 0.01,
                 pics_blend: float | str | None = 0.0, pics_weight: float | str | None = None, pics_region: str = PICS_REGION,
                 pics_mode: str | None = None, write_maps: bool = False, solver: str = "shipped",
                 espirit_calibration: str = ESPIRIT_CALIBRATION,
                 device: str | torch.device = "cpu", progress: bool = True) -> None:
        try:
            check_acceleration(float(acceleration))
            check_mask_type(mask_type)
        except (TypeError, ValueError) as e:
            raise InputError(f"acceleration / mask_type: {e}") from None
        if method not in MULTICOIL_METHODS:
            raise InputError(f"multicoil_method {method!r}: expected one of {', '.join(MULTICOIL_METHODS)}")
        if method == "varnet" and network is None:
            raise InputError("multicoil_method varnet needs the multi-coil network")
        if not float(weight) >= 0:
            raise InputError(f"multicoil_weight must be >= 0, got {weight!r}")
        self.acceleration = float(acceleration)
        self.center_fraction = default_center_fraction(self.acceleration) if center_fraction is None else float(center_fraction)
        if not 0 < self.center_fraction <= 1:
            raise InputError(f"center_fraction must be in (0, 1], got {center_fraction!r}")
        self.mask_type = mask_type
        self.method, self.weight = method, float(weight)
        check_options(multicoil_pics_blend="auto" if pics_blend is None else pics_blend,
                      multicoil_pics_weight="auto" if pics_weight is None else pics_weight,
                      multicoil_pics_region=pics_region, multicoil_pics_mode="auto" if pics_mode is None else pics_mode,
                      espirit_calibration=espirit_calibration)
        self.espirit_calibration = str(espirit_calibration)
        try:
            check_solver(solver)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.solver = solver
        self.pics_region = str(pics_region)
        self.pics_mode: str | None = None if is_auto(pics_mode) else str(pics_mode)  # None: `pics_mode_for` the mask
        # None: by the mask's acceleration (`pics_blend_for`, `pics_weight_for`)
        self.pics_blend: float | None = None if is_auto(pics_blend) else float(pics_blend)  # type: ignore[arg-type]
        self.blends = self.pics_blend is None or self.pics_blend > 0
        self.pics_weight = None if is_auto(pics_weight) else float(pics_weight)  # type: ignore[arg-type]
        self.network = network.eval() if network is not None else None
        self.device = torch.device(device)
        self.write_maps = bool(write_maps)
        self.progress = progress
        if self.write_maps:
            self.outputs = (*self.outputs, "maps")

    def mask_of(self, raw: RawKspace, name: str) -> np.ndarray:
        """The acquired samples: the file's own, or a retrospective (W,) mask seeded by the k-space
        itself (`name` is only for messages): the same data under any name gets the same mask."""
        if raw.mask is not None:
            return raw.mask
        rng = np.random.default_rng(slice_seed(content_key(np.abs(raw.kspace)), "multicoil", self.mask_type, self.acceleration, self.center_fraction))
        return cartesian_mask(raw.kspace.shape[-1], self.acceleration, self.center_fraction, self.mask_type, rng).numpy()

    def check(self, raw: RawKspace, name: str) -> dict:
        """Checks before anything is written; returns the reconstruction's extra inputs."""
        if raw.coils < 2:
            raise InputError(f"{raw.path}: single-coil k-space (1 coil); the multi-coil model needs at least 2 coils "
                             "(single-coil fastMRI files go to the single-coil model in configs/inference.yaml)")
        mask = self.mask_of(raw, name)
        try:
            acs_window(torch.from_numpy(mask), tuple(raw.kspace.shape[-2:]))
        except InputError as e:
            raise InputError(f"{raw.path}: {e}") from None
        return {"mask": mask}

    @torch.no_grad()
    def reconstruct_raw(self, raw: RawKspace, name: str, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every slice of `raw` -> the outputs (module docstring)."""
        s, c, h, w = raw.kspace.shape
        grid = np.broadcast_to(mask if mask.ndim == 2 else mask[None, :], (h, w))
        m = torch.from_numpy(np.array(grid, dtype=bool))  # a copy: broadcast views are read-only
        recon = np.zeros((s, h, w), np.float32)
        zero_filled = np.zeros((s, h, w), np.float32)
        maps = np.zeros((s, c, h, w), np.complex64) if self.write_maps else None
        network: VarNet | None = self.network.to(self.device) if self.network is not None else None
        for i in tqdm(range(s), desc=f"{name}: slices", unit="slice", disable=not self.progress or s < 4, leave=False):
            acquired = torch.from_numpy(raw.kspace[i]) * m
            zero_filled[i] = rss(ifft2c(acquired), 0).numpy()
            # the sensitivities: the file's own, else ESPIRiT from the calibration region; none
            # for zero-filled, and a learned-maps network makes its own
            if self.method == "varnet":
                needs_maps = network is not None and (network.takes_maps or self.blends)
            else:
                needs_maps = self.method != "zero_filled"
            given = None
            if needs_maps:
                given = raw.maps[min(i, raw.maps.shape[0] - 1)] if raw.maps is not None else sensitivities(acquired.numpy(), mask, calibration=self.espirit_calibration)
            if self.method == "varnet":
                assert network is not None
                mask_in = m[None, None] if mask.ndim == 2 else m[:1][None, None]
                # a learned-maps network makes its own maps; PICS gets ESPIRiT's (or the file's)
                maps_in = torch.from_numpy(given)[None].to(self.device) if network.takes_maps else None
                coil_images, used = network.coil_images(acquired[None].to(self.device), mask_in.to(self.device), maps_in)
                coils = coil_images[0]
                recon[i] = rss(coils, 0).float().cpu().numpy()
                if self.blends:
                    assert given is not None
                    recon[i] = combine_with_pics(recon[i], coils.cpu().numpy(), acquired.numpy(), mask, given,
                                                 self.pics_blend, self.pics_weight, self.pics_region, self.pics_mode,
                                                 solver=self.solver)
                given = used[0].cpu().numpy()
            else:
                recon[i] = classical(self.method, acquired.numpy(), mask, given, self.weight)
            if maps is not None and given is not None:
                maps[i] = given
        out = {"recon": recon, "zero_filled": zero_filled}
        result = {k: np.moveaxis(center_crop(v, raw.crop), 0, 2) for k, v in out.items()}
        result["mask"] = grid.astype(np.float32)[:, :, None]  # on the k-space grid: never cropped
        if maps is not None:
            result["maps"] = np.transpose(center_crop(maps, raw.crop), (2, 3, 0, 1))
        return result
