"""Dictionary transforms that the configs compose; thin wrappers over `bundle.kspace`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from bundle.errors import InputError
from bundle.kspace import (
    cartesian_mask,
    check_acceleration,
    check_mask_type,
    default_center_fraction,
    slice_seed,
    undersample,
)


def _source_name(img) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<array>"))


class CheckVolumed(MapTransform):
    """Stop with a one-line `InputError` naming the file when a volume is not a finite 3D image.

    Place it right after `LoadImaged` (before any channel is added).

    Args:
        keys: keys of the volumes to check.
        spatial_dims: the number of dimensions expected (3 for volumes).
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = _source_name(img)
            shape = tuple(img.shape)
            if len(shape) != self.spatial_dims:
                hint = "; give one 3D volume per frame" if len(shape) == self.spatial_dims + 1 else ""
                raise InputError(f"{name}: expected a {self.spatial_dims}D volume, got shape {shape}{hint}")
            if torch.is_tensor(img) and img.is_complex():
                raise InputError(f"{name}: complex voxels are not supported, give a magnitude image")
            arr = torch.as_tensor(img)
            if not torch.isfinite(arr).all():
                raise InputError(f"{name}: contains NaN or infinite voxels")
            if arr.numel() == 0 or float(arr.abs().max()) == 0.0:
                raise InputError(f"{name}: the volume is empty (all zeros)")
        return d


def percentile_scale(volume: torch.Tensor, percentile: float = 99.5) -> float:
    """The intensity that maps to 1 after normalisation: the `percentile` of the non-zero voxels."""
    v = volume.detach().float().flatten()
    v = v[v > 0]
    if v.numel() == 0:
        return 0.0
    if v.numel() > 2_000_000:  # quantile's input limit: subsample deterministically
        v = v[:: v.numel() // 2_000_000 + 1]
    return float(torch.quantile(v, percentile / 100.0))


class ScaleByPercentiled(MapTransform):
    """Divide a volume by its `percentile` (of non-zero voxels); the scale is kept for restoring.

    Args:
        keys: keys of the volumes.
        percentile: percentile in (0, 100] that maps to 1.
        scale_key_postfix: the scale is stored under `f"{key}_{scale_key_postfix}"`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        percentile: float = 99.5,
        scale_key_postfix: str = "scale",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.percentile = percentile
        self.postfix = scale_key_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            scale = percentile_scale(torch.as_tensor(d[key]), self.percentile)
            if scale <= 0:
                raise InputError(f"{_source_name(d[key])}: no positive intensity to normalise")
            d[key] = d[key] / scale
            d[f"{key}_{self.postfix}"] = scale
        return d


class RestoreScaled(MapTransform):
    """Multiply each key by the scale `ScaleByPercentiled` stored (undo the normalisation), e.g.
    on the network's prediction in `postprocessing`.

    Args:
        keys: keys to rescale.
        scale_key: the key holding the scale ("image_scale" for a normalised "image").
    """

    def __init__(self, keys: KeysCollection, scale_key: str = "image_scale", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scale_key = scale_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.scale_key not in d:
            raise InputError(f"RestoreScaled: no {self.scale_key!r} in the data (is ScaleByPercentiled in preprocessing?)")
        for key in self.key_iterator(d):
            d[key] = d[key] * float(d[self.scale_key])
        return d


class SliceSeededTransform(MapTransform, RandomizableTransform):
    """Base of the acquisition simulators: when `deterministic`, the random draws of a slice depend
    only on its `seed_key` value (e.g. "file:slice") and the acquisition, so validation, test and
    inference numbers repeat; otherwise they come from the transform's random state."""

    def __init__(
        self,
        keys: KeysCollection,
        deterministic: bool = False,
        seed_key: str = "slice_id",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.deterministic, self.seed_key, self.label_key = deterministic, seed_key, label_key

    def seed(self, d: Mapping, *acquisition: object) -> int:
        """The seed of item `d`: from its `seed_key` and `acquisition` when deterministic (a
        KeyError if the key is missing), else drawn from the random state."""
        if self.deterministic:
            if self.seed_key not in d:
                raise KeyError(f"deterministic simulation needs the key {self.seed_key!r}")
            return slice_seed(d[self.seed_key], *acquisition)
        return int(self.R.randint(0, 2**31 - 1))


class UndersampleKspaced(SliceSeededTransform):
    """Simulate a Cartesian undersampled acquisition of a fully sampled 2D slice.

    Reads `keys` (a (1, H, W) fully sampled magnitude slice) and writes:
    `label` (the fully sampled slice), the key itself (the zero-filled magnitude, the network
    input), `kspace` ((2, H, W) real and imaginary acquired k-space), `mask` ((1, 1, W) acquired
    lines) and `acceleration`.

    Each call picks one (acceleration, centre fraction) pair uniformly. When `deterministic`, the
    pair and mask depend only on `seed_key`'s value (e.g. "file:slice"), so validation and test
    numbers are reproducible; otherwise they come from the transform's random state.

    Args:
        keys: the fully sampled image key.
        accelerations: undersampling factors, e.g. [4, 8].
        center_fractions: fully sampled centre fraction for each acceleration; default fastMRI's
            0.32 / acceleration (0.08 for 4x, 0.04 for 8x).
        mask_type: "equispaced" or "random".
        deterministic: seed the mask from `seed_key`.
        seed_key: the data key whose value seeds deterministic masks.
        label_key: where the fully sampled slice is copied.
    """

    def __init__(
        self,
        keys: KeysCollection,
        accelerations: Sequence[float] | float = (4,),
        center_fractions: Sequence[float] | float | None = None,
        mask_type: str = "equispaced",
        deterministic: bool = False,
        seed_key: str = "slice_id",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, deterministic, seed_key, label_key, allow_missing_keys)
        self.mask_type = mask_type
        self.set_accelerations(accelerations, center_fractions, mask_type)

    def set_accelerations(
        self,
        accelerations: Sequence[float] | float,
        center_fractions: Sequence[float] | float | None = None,
        mask_type: str | None = None,
    ) -> None:
        """Change the simulated acquisition (used by evaluation to run 4x then 8x)."""
        accs = [accelerations] if np.isscalar(accelerations) else list(accelerations)
        if not accs:
            raise InputError("accelerations is empty")
        for a in accs:
            try:
                check_acceleration(float(a))
            except (TypeError, ValueError):
                raise InputError(f"acceleration must be a number >= 1, got {a!r}") from None
        if center_fractions is None:
            cfs = [default_center_fraction(float(a)) for a in accs]
        else:
            cfs = [center_fractions] if np.isscalar(center_fractions) else list(center_fractions)
        if len(cfs) != len(accs):
            raise InputError(f"{len(accs)} accelerations but {len(cfs)} center_fractions")
        mask_type = self.mask_type if mask_type is None else mask_type
        try:
            check_mask_type(mask_type)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.accelerations = [float(a) for a in accs]
        self.center_fractions = [float(c) for c in cfs]
        self.mask_type = mask_type

    def _rng(self, d: Mapping) -> np.random.Generator:
        return np.random.default_rng(self.seed(d, self.mask_type, *self.accelerations))

    def draw(self, d: Mapping, width: int) -> tuple[torch.Tensor, float]:
        """The (W,) mask and acceleration of one slice (seeded by `d[seed_key]` when deterministic):
        what `__call__` uses, for callers that undersample whole batches on a GPU."""
        rng = self._rng(d)
        choice = int(rng.integers(len(self.accelerations)))
        acc, cf = self.accelerations[choice], self.center_fractions[choice]
        return cartesian_mask(width, acc, cf, self.mask_type, rng), acc

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False).float()
            mask, acc = self.draw(d, image.shape[-1])
            zero_filled, kspace = undersample(image, mask)
            d[self.label_key] = image
            d[key] = zero_filled.float()
            d["kspace"] = torch.cat([kspace.real, kspace.imag], dim=0).float()
            d["mask"] = mask.float().view(1, 1, -1)
            d["acceleration"] = acc
        return d


def check_acquisition(accelerations: Sequence[float], mask_type: str) -> None:
    """Validate acquisition options from a config before anything runs (an `InputError` if bad)."""
    UndersampleKspaced(keys="image", accelerations=accelerations, mask_type=mask_type)
