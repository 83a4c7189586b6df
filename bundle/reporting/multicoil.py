"""Multi-coil comparison: the network against zero-filled RSS, CG-SENSE and L1-wavelet PICS (ESPIRiT
maps) on the same cases, real or simulated coils, each baseline's weight tuned on validation cases.

Metrics as the issue that set the target defines them: scikit-image's SSIM and PSNR on the whole
image (no crop, no mask), data range = the maximum of the fully sampled RSS, per case (a case is
one file's slices, or one simulated subject's), then the mean over cases.

Cases:
- real: fully sampled raw files (`bundle.data.rawkspace`); every coil undersampled with one
  equispaced mask per file (fastMRI centre fraction), seeded by the file name;
- simulated: slices of magnitude volumes (the demo subjects) with a simulated receive array
  (`SimulateMultiCoild`, seeded by file and slice, as validation in training).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from bundle.data.rawkspace import read_raw
from bundle.errors import InputError
from bundle.parallel_imaging import PICS_REGION, classical, combine_with_pics, sensitivities
from bundle.physics.mri import cartesian_mask, default_center_fraction, ifft2c
from bundle.physics.mri_sense import estimate_sensitivities, rss
from bundle.transforms.base import slice_seed
from bundle.varnet import VarNet


@dataclass
class Case:
    """One case: its slices of fully sampled coil k-space (C, H, W) each, and where it came from."""

    name: str
    kind: str  # "real" or "simulated"
    slices: list[np.ndarray]


def real_cases(paths: Iterable[str]) -> list[Case]:
    """Fully sampled raw multi-coil files as cases (an `InputError` for undersampled ones)."""
    cases = []
    for p in paths:
        raw = read_raw(p)
        if raw.mask is not None:
            raise InputError(f"{p}: undersampled; a comparison needs fully sampled k-space (the reference)")
        if raw.coils < 2:
            raise InputError(f"{p}: single-coil k-space")
        cases.append(Case(os.path.basename(p), "real", [raw.kspace[s] for s in range(raw.kspace.shape[0])]))
    return cases


def simulated_cases(parser, items: Sequence[dict], every: int = 8) -> list[Case]:
    """Every `every`-th slice (with tissue) of each volume, with the simulated receive array of
    validation (`validate#undersample` of train.yaml + train_multicoil.yaml, seeded by file and
    slice)."""
    from bundle.data.datasets import VolumeSlices

    volume_transform = parser.get_parsed_content("volume_transforms")
    simulate = parser.get_parsed_content("validate#undersample")
    slicer = VolumeSlices(volume_transform, parser.get_parsed_content("slice_axis"),
                          parser.get_parsed_content("min_foreground"))
    cases = []
    for item in items:
        slices = slicer(item)[::every]
        kspace = [simulate.coil_kspace(torch.as_tensor(s["image"])[0].float(),
                                       simulate.seed(s, "coils", simulate.coils, simulate.snr, simulate.max_phase)).numpy()
                  for s in slices]
        cases.append(Case(os.path.basename(item["image"]), "simulated", kspace))
    return cases


def file_mask(name: str, width: int, acceleration: float, mask_type: str = "equispaced") -> np.ndarray:
    """One (W,) mask per case, seeded by its name (fastMRI centre fraction)."""
    rng = np.random.default_rng(slice_seed(name, "compare", mask_type, acceleration))
    return cartesian_mask(width, acceleration, default_center_fraction(acceleration), mask_type, rng).numpy()


Method = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (acquired k-space (C, H, W), mask (W,)) -> (H, W)


def varnet_method(network: VarNet, device: str | torch.device = "cpu", cache: MapsCache | None = None,
                  pics_blend: float | None = 0.0, pics_weight: float | None = None, pics_region: str = PICS_REGION,
                  pics_mode: str | None = None, solver: str = "shipped") -> Method:
    """The multi-coil network as a method; one that takes maps gets ESPIRiT's (as at inference;
    their time counts in the network's seconds unless `cache` already holds them). `pics_blend` > 0
    (None: `pics_blend_for` the mask, as shipped): the inference's hybrid
    (`bundle.parallel_imaging.combine_with_pics`): (1 - pics_blend) x network + pics_blend x PICS
    joined with the network ("joint") or PICS alone ("average"), `pics_mode` None: by the mask, as
    shipped; PICS's weight `pics_weight` (None: `pics_weight_for` the mask), on the object or
    everywhere (`pics_region`), with the same ESPIRiT maps, PICS's time included; `solver` a key of
    `bundle.parallel_imaging.SOLVERS` ("0.18" reproduces the studies before 0.19)."""
    network = network.eval().to(device)
    cache = cache or MapsCache()
    blends = pics_blend is None or pics_blend > 0

    @torch.no_grad()
    def run(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
        k = torch.from_numpy(kspace)[None].to(device)
        m = torch.from_numpy(mask).view(1, 1, 1, -1).to(device)
        takes_maps = getattr(network, "takes_maps", False)
        espirit = cache("espirit", kspace, mask) if takes_maps or blends else None
        maps = torch.from_numpy(espirit)[None].to(device) if takes_maps else None
        coils = network.coil_images(k, m, maps)[0][0]
        image = rss(coils, 0).cpu().numpy()
        if espirit is not None and blends:
            image = combine_with_pics(image, coils.cpu().numpy(), kspace, mask, espirit, pics_blend, pics_weight,
                                      pics_region, pics_mode, solver=solver)
        return image

    return run


class MapsCache:
    """ESPIRiT (or ACS) maps per acquired slice, computed once for every method and weight."""

    def __init__(self) -> None:
        self.maps: dict[tuple[str, bytes], np.ndarray] = {}

    def __call__(self, kind: str, kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import hashlib

        key = (kind, hashlib.sha1(kspace.tobytes() + np.asarray(mask).tobytes()).digest())
        if key not in self.maps:
            if kind.startswith("espirit"):  # "espirit" (the shipped calibration), "espirit-square", "espirit-window"
                self.maps[key] = sensitivities(kspace, mask, calibration=kind.partition("-")[2] or None)
            else:
                self.maps[key] = estimate_sensitivities(torch.from_numpy(kspace), torch.from_numpy(mask)).numpy()
        return self.maps[key]


def baseline_method(method: str, weight: float, maps: str = "espirit", cache: MapsCache | None = None) -> Method:
    """A classical baseline (`bundle.parallel_imaging.classical`) with ESPIRiT maps (all pixels
    kept; the calibration maps where the region is under 4 lines wide): "espirit" (the shipped
    calibration), "espirit-square" (SigPy's) or "espirit-window" (the whole region); or "acs" maps
    (`estimate_sensitivities`)."""
    cache = cache or MapsCache()

    def run(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if method == "zero_filled":
            return classical(method, kspace, mask, None, 0.0)
        return classical(method, kspace, mask, cache(maps, kspace, mask), weight)

    return run


def score(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """scikit-image SSIM and PSNR of one slice, data range = the reference maximum."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    dr = float(ref.max())
    return (float(structural_similarity(ref, pred.astype(ref.dtype), data_range=dr)),
            float(peak_signal_noise_ratio(ref, pred.astype(ref.dtype), data_range=dr)))


def evaluate(cases: Sequence[Case], methods: Mapping[str, Method], acceleration: float, desc: str = "cases",
             keep: Callable[[str, int], bool] | None = None):
    """{method: {case: {"ssim", "psnr"}}} (means over each case's slices), seconds per slice per
    method, and the kept slices' images {(case, slice): {"reference", <method>..., "mask"}}."""
    per_case: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    seconds = {m: 0.0 for m in methods}
    count = 0
    kept: dict = {}
    for case in tqdm(cases, desc=desc, unit="case"):
        scores: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
        for i, full in enumerate(case.slices):
            mask = file_mask(case.name, full.shape[-1], acceleration)
            acquired = (full * mask).astype(np.complex64)
            ref = rss(ifft2c(torch.from_numpy(full)), 0).numpy()
            images = {"reference": ref, "mask": np.broadcast_to(mask, ref.shape)}
            for name, method in methods.items():
                t = time.perf_counter()
                pred = method(acquired, mask)
                seconds[name] += time.perf_counter() - t
                scores[name].append(score(pred, ref))
                images[name] = pred
            count += 1
            if keep is not None and keep(case.name, i):
                kept[(case.name, i)] = images
        for name in methods:
            s = np.asarray(scores[name])
            per_case[name][case.name] = {"ssim": float(s[:, 0].mean()), "psnr": float(s[:, 1].mean())}
    return per_case, {m: v / max(count, 1) for m, v in seconds.items()}, kept


def tune(cases: Sequence[Case], method: str, weights: Sequence[float], acceleration: float,
         maps: str = "espirit", cache: MapsCache | None = None) -> tuple[float, dict[str, float]]:
    """The weight with the best mean SSIM over `cases` (validation), and every weight's score."""
    cache = cache or MapsCache()
    methods = {f"{w:g}": baseline_method(method, w, maps, cache) for w in weights}
    per_case, _, _ = evaluate(cases, methods, acceleration, desc=f"tuning {method} ({maps} maps) on validation")
    scores = {k: float(np.mean([v["ssim"] for v in per_case[k].values()])) for k in methods}
    best = max(weights, key=lambda w: scores[f"{w:g}"])
    return float(best), scores


def table(per_case: Mapping, seconds: Mapping, names: Iterable[str]) -> str:
    """A markdown table: mean SSIM and PSNR over the cases `names`, and the seconds per slice."""
    wanted = set(names)
    lines = ["| method | SSIM | PSNR (dB) | s / slice |", "|---|---|---|---|"]
    for method, cases in per_case.items():
        ssim = [v["ssim"] for c, v in cases.items() if c in wanted]
        psnr = [v["psnr"] for c, v in cases.items() if c in wanted]
        if ssim:
            lines.append(f"| {method} | {np.mean(ssim):.4f} | {np.mean(psnr):.2f} | {seconds[method]:.3f} |")
    return "\n".join(lines) + "\n"
