"""Radiograph transforms: the simulated low-dose exposure of a normalised radiograph
(`bundle.physics.noise.low_dose_radiograph`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.utils import convert_to_tensor

from bundle.physics.noise import check_dose, low_dose_radiograph
from bundle.transforms.base import SliceSeededTransform


class LowDoseRadiographd(SliceSeededTransform):
    """Replace a normalised radiograph by its simulated low-dose version; the original goes to
    `label`. Deterministic noise (seeded by `seed_key`) for validation and test."""

    def __init__(
        self,
        keys: KeysCollection,
        incident_photons: float = 200.0,
        electronic_noise: float = 2.0,
        deterministic: bool = False,
        **options,
    ) -> None:
        """`options`: `seed_key`, `label_key`, `allow_missing_keys` of `SliceSeededTransform`."""
        super().__init__(keys, deterministic, **options)
        self.electronic_noise = float(electronic_noise)
        self.set_dose(incident_photons)

    def set_dose(self, incident_photons: float) -> None:
        check_dose(float(incident_photons), self.electronic_noise)
        self.incident_photons = float(incident_photons)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        g = torch.Generator().manual_seed(self.seed(d, "xray", self.incident_photons))
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False).float()
            d[self.label_key] = image
            d[key] = low_dose_radiograph(image, self.incident_photons, self.electronic_noise, g)
            d["incident_photons"] = self.incident_photons
        return d
