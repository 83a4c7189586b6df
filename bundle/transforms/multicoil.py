"""Multi-coil MRI transforms: a simulated receive array on a magnitude slice, then the Cartesian
undersampling of every coil with one mask; and the same undersampling of real coil k-space."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from bundle.errors import InputError
from bundle.options import check_options, number_range
from bundle.physics.mri import fft2c, ifft2c
from bundle.physics.mri_sense import random_coil_maps, rss, smooth_phase
from bundle.transforms.mri import UndersampleKspaced


def object_noise_sigma(image: torch.Tensor, gen: torch.Generator, snr: Sequence[float]) -> float:
    """The noise's standard deviation per complex k-space sample for the magnitude `image`: the
    object's mean (pixels above 10 % of the maximum) over an SNR drawn log-uniformly from the range
    `snr` (one draw from `gen` always; 0 when its upper end is 0: no noise)."""
    low, high = math.log(max(snr[0], 1e-6)), math.log(max(snr[1], 1e-6))
    value = math.exp(low + float(torch.rand(1, generator=gen)) * (high - low))
    obj = image[image > 0.1 * image.max()]
    return float(obj.mean()) / value if snr[1] > 0 and obj.numel() else 0.0


class UndersampleMultiCoild(UndersampleKspaced):
    """Undersample fully sampled multi-coil k-space, every coil with the same Cartesian mask.

    Reads `keys` ((C, H, W) complex fully sampled coil k-space) and writes: "kspace" (the acquired
    k-space, (C, H, W) complex, zero off the mask), "mask" ((1, 1, W) bool), `label` ((1, H, W)
    the RSS of the fully sampled coil images: the reference, as fastMRI's), "zero_filled" and the
    key "image" ((1, H, W) the RSS of the acquired data: the classical baseline), "acceleration".
    Options as `UndersampleKspaced`.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            full = convert_to_tensor(d.pop(key), track_meta=False)
            if not full.is_complex() or full.ndim != 3:
                raise InputError(f"multi-coil k-space must be complex (coils, H, W), got {full.dtype} {tuple(full.shape)}")
            full = full.to(torch.complex64)
            mask, acc = self.draw(d, full.shape[-1])
            kspace = full * mask.to(full.real.dtype)
            d[self.label_key] = rss(ifft2c(full), 0).unsqueeze(0)
            d["zero_filled"] = rss(ifft2c(kspace), 0).unsqueeze(0)
            d["image"] = d["zero_filled"]
            d["kspace"] = kspace
            d["mask"] = mask.view(1, 1, -1)
            d["acceleration"] = acc
        return d


class SimulateMultiCoild(UndersampleMultiCoild):
    """A multi-coil acquisition of a (1, H, W) magnitude slice, then its undersampling.

    The slice gets a smooth random phase (`smooth_phase`), is multiplied by random receive
    sensitivities (`random_coil_maps`: a coil count drawn from `coils`, random placement and
    rotation), Fourier transformed, and complex Gaussian noise is added with a standard deviation
    of (mean magnitude of the object) / snr, snr drawn log-uniformly from `snr`: the coil
    combination then has about that SNR in the object. With `oversampling` above 1 the coil
    images are first centred in a field of view that many times longer along H (the readout), as
    scanners and fastMRI's brain files (640 x 320) acquire them: half such a grid is background
    with noise only. Then `UndersampleMultiCoild` (outputs there, on the whole grid). Augment the
    magnitude slice before this transform.

    Args:
        keys: the (1, H, W) magnitude slice.
        coils: [min, max] coil count (drawn uniformly), or one number.
        snr: [min, max] signal-to-noise ratio of the combined image, or one number; 0 = no noise.
        max_phase: the smooth phase spans at most about this many radians.
        accelerations, center_fractions, mask_type, deterministic, seed_key, label_key: as
            `UndersampleKspaced` (deterministic: coils, phase and noise are seeded by the slice too).
        maps_key: also write the true sensitivities ((C, H, W) complex, unit RSS) under this key
            (None: not written), for a network that takes maps.
        oversampling: [min, max] readout oversampling factor (drawn uniformly; the grid's H is
            rounded to an even number), or one number; 1 = none (the default).
    """

    def __init__(
        self,
        keys: KeysCollection,
        coils: Sequence[int] | int = (4, 32),
        snr: Sequence[float] | float = (10.0, 80.0),
        max_phase: float = math.pi,
        accelerations: Sequence[float] | float = (4,),
        center_fractions: Sequence[float] | float | None = None,
        mask_type: str = "equispaced",
        deterministic: bool = False,
        seed_key: str = "slice_id",
        label_key: str = "label",
        maps_key: str | None = None,
        allow_missing_keys: bool = False,
        oversampling: Sequence[float] | float = 1.0,
    ) -> None:
        super().__init__(keys, accelerations, center_fractions, mask_type, deterministic, seed_key, label_key,
                         allow_missing_keys)
        self.maps_key = maps_key
        low, high = number_range("coils", coils, 1)
        self.coils = (int(low), int(high))
        self.snr = number_range("snr", snr, 0.0)
        if not 0 <= float(max_phase) <= 100:
            raise InputError(f"max_phase must be in [0, 100] radians, got {max_phase!r}")
        self.max_phase = float(max_phase)
        self.oversampling = number_range("oversampling", oversampling, 1.0)
        if self.oversampling[1] > 4:
            raise InputError(f"oversampling must be at most 4, got {oversampling!r}")

    def acquisition(self) -> tuple:
        """What the deterministic seed depends on (oversampling only when used, so that the seeds,
        and every simulated validation set, are those of earlier releases without it)."""
        base: tuple = ("coils", self.coils, self.snr, self.max_phase)
        return base + (("oversampling", self.oversampling),) if self.oversampling != (1.0, 1.0) else base

    def readout_length(self, h: int, seed: int) -> int:
        """The oversampled grid's H for an (h, W) slice: its own generator (seed + 1), so that the
        coil, phase and noise draws are those of the grid without oversampling."""
        if self.oversampling == (1.0, 1.0):
            return h
        gen = torch.Generator().manual_seed(seed + 1)
        low, high = self.oversampling
        factor = low + float(torch.rand(1, generator=gen)) * (high - low)
        return max(h, int(round(h * factor / 2)) * 2)

    def coil_kspace(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """(H, W) magnitude -> (C, H, W) noisy complex coil k-space, all draws from `seed`."""
        return self.coil_data(image, seed)[0]

    def coil_data(self, image: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, W) magnitude -> (C, H, W) noisy complex coil k-space and the (C, H, W) maps."""
        gen = torch.Generator().manual_seed(seed)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        coils = int(torch.randint(self.coils[0], self.coils[1] + 1, (1,), generator=gen))
        phase = smooth_phase((h, w), gen, self.max_phase)
        x = torch.polar(image.float(), phase)
        maps = random_coil_maps(coils, (h, w), gen)
        length = self.readout_length(h, seed)
        if length > h:  # the object in a longer field of view along the readout, nothing around it;
            top = (length - h) // 2  # the smooth maps extend to the new rows by their edge values
            x = torch.nn.functional.pad(x, (0, 0, top, length - h - top))
            maps = maps[:, (torch.arange(length) - top).clamp(0, h - 1)]
        k = fft2c(maps * x)
        sigma = self.noise_sigma(image, gen)
        if self.snr[1] > 0:
            noise = torch.randn(k.shape, generator=gen, dtype=k.dtype)  # complex: unit variance in total
            k = k + sigma * noise
        return k, maps

    def noise_sigma(self, image: torch.Tensor, gen: torch.Generator) -> float:
        """`object_noise_sigma` of `image` with this transform's `snr` range."""
        return object_noise_sigma(image, gen, self.snr)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False).float()
            if image.ndim != 3 or image.shape[0] != 1:
                raise InputError(f"expected a (1, H, W) magnitude slice, got shape {tuple(image.shape)}")
            seed = self.seed(d, *self.acquisition())
            d[key], maps = self.coil_data(image[0], seed)
            d = super().__call__(d)
            if self.maps_key is not None:
                d[self.maps_key] = maps.to(torch.complex64)
        return d


class EspiritMapsd(MapTransform):
    """ESPIRiT coil sensitivities of acquired multi-coil k-space ("kspace" (C, H, W) and "mask",
    as `UndersampleMultiCoild` writes them), under `maps_key`: what a network that takes maps
    gets at inference (`bundle.parallel_imaging.sensitivities`: ESPIRiT, all pixels kept, on the
    `calibration` region ("square", "window", "window24"; None: the shipped one), or the calibration lines'
    maps when the region is under 4 lines).

    ESPIRiT costs about a second a slice on a CPU; the maps depend only on the calibration region,
    so they are cached by the slice ("slice_id"), the flips `AugmentCoilKspaced` made (it leaves
    them under "augmentation", which this transform removes) and the calibration region's bounds;
    a global phase changes ESPIRiT's maps by that phase only (which a SENSE reconstruction
    absorbs), so it is not part of the key. Items without a "slice_id" are not cached, nor is
    anything with `cache_size=0` (simulated coils drawn afresh at every access).
    """

    def __init__(self, keys: KeysCollection = ("kspace",), mask_key: str = "mask", maps_key: str = "maps",
                 cache_size: int = 512, calibration: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if calibration is not None:
            check_options(espirit_calibration=calibration)
        self.mask_key, self.maps_key, self.cache_size = mask_key, maps_key, int(cache_size)
        self.calibration = calibration
        self.cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from bundle.parallel_imaging import sensitivities
        from bundle.physics.mri_sense import acs_window

        d = dict(data)
        flips = d.pop("augmentation", "")
        cached = d.get("slice_id") is not None and self.cache_size > 0
        for key in self.key_iterator(d):
            k = convert_to_tensor(d[key], track_meta=False).to(torch.complex64)
            mask = convert_to_tensor(d[self.mask_key], track_meta=False).reshape(-1, k.shape[-1])
            mask = mask[0] if mask.shape[0] == 1 else mask
            ident: tuple | None = None
            if cached:
                window = acs_window(mask, (int(k.shape[-2]), int(k.shape[-1])))
                rows, cols = torch.nonzero(window.any(1)).flatten(), torch.nonzero(window.any(0)).flatten()
                ident = (d["slice_id"], str(key), flips, tuple(k.shape), int(rows[0]), int(rows[-1]),
                         int(cols[0]), int(cols[-1]))
            maps = self.cache.get(ident) if ident is not None else None
            if maps is None:
                maps = torch.from_numpy(sensitivities(k.numpy(), mask.numpy(), calibration=self.calibration))
                if ident is not None:
                    if len(self.cache) >= self.cache_size:
                        self.cache.pop(next(iter(self.cache)))
                    self.cache[ident] = maps
            d[self.maps_key] = maps
        return d


class AugmentCoilKspaced(MapTransform, RandomizableTransform):
    """Random flips of the coil images (both axes, each with probability `flip_prob`) and one
    random global phase, applied to fully sampled (C, H, W) coil k-space in the image domain: new
    real examples that keep the acquisition's physics (coils, noise, sampling grid). The flips are
    noted under "augmentation" (`EspiritMapsd` caches maps by them and removes the note)."""

    def __init__(self, keys: KeysCollection, flip_prob: float = 0.5, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0 <= float(flip_prob) <= 1:
            raise InputError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
        self.flip_prob = float(flip_prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            images = ifft2c(convert_to_tensor(d[key], track_meta=False).to(torch.complex64))
            dims = [dim for dim in (-2, -1) if self.R.rand() < self.flip_prob]
            if dims:
                images = images.flip(dims)
            d["augmentation"] = f"{d.get('augmentation', '')}{key}:flip{dims};"  # for EspiritMapsd's cache
            phase = torch.tensor(float(self.R.uniform(-math.pi, math.pi)))
            d[key] = fft2c(images * torch.polar(torch.ones(()), phase))
        return d
