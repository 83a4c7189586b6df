"""MRI transforms: the simulated Cartesian undersampling of a fully sampled slice."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.utils import convert_to_tensor

from bundle.errors import InputError
from bundle.physics.mri import cartesian_mask, check_acceleration, check_mask_type, default_center_fraction, undersample
from bundle.transforms.base import SliceSeededTransform


def _as_list(value: Any) -> list:
    """A scalar (or a string, checked later) as a one-item list; a sequence as a list."""
    return [value] if isinstance(value, (str, bytes)) or np.ndim(value) == 0 else list(value)


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
        accs = _as_list(accelerations)
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
            cfs = _as_list(center_fractions)
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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
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
