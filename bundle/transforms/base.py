"""Transforms every modality uses: the volume check, percentile normalisation and its inverse, and
the base of the seeded acquisition simulators."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from bundle.errors import InputError


def slice_seed(*keys: object) -> int:
    """A seed that depends only on `keys` (e.g. file name and slice index), stable across runs and machines."""
    return zlib.crc32(":".join(str(k) for k in keys).encode()) & 0x7FFFFFFF


def content_key(array) -> str:
    """A key for seeding a simulated acquisition from the data itself (not the file name): a hash of
    the array's float32 values and shape. The same data under any file name, or uploaded twice to a
    server under random temporary names, gets the same acquisition."""
    a = array.detach().cpu().numpy() if torch.is_tensor(array) else array
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    h = hashlib.blake2b(a.tobytes(), digest_size=8)
    h.update(repr(a.shape).encode())
    return h.hexdigest()


def source_name(img) -> str:
    """The file a MONAI image came from (its `filename_or_obj`), for error messages."""
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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = source_name(img)
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


def normalisation_scale(volume: torch.Tensor, percentile: float, name: str) -> float:
    """`percentile_scale`, else an `InputError` naming `name` when the volume has no positive voxel."""
    scale = percentile_scale(volume, percentile)
    if scale <= 0:
        raise InputError(f"{name}: no positive intensity to normalise")
    return scale


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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            scale = normalisation_scale(torch.as_tensor(d[key]), self.percentile, source_name(d[key]))
            key_of_content = content_key(torch.as_tensor(d[key]).squeeze(0)) if hasattr(d[key], "meta") else None
            d[key] = d[key] / scale
            if key_of_content is not None:  # MRI inference seeds its masks from it (SliceReconstructionInferer)
                d[key].meta["content_key"] = key_of_content
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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
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
