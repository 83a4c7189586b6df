"""Lesion fidelity: insert small synthetic lesions into reference slices, reconstruct, and measure
the contrast each method recovers, its detectability (contrast-to-noise ratio), and the false
structure it creates where no lesion was inserted (hallucination check).

A lesion is a disc whose intensity is the local tissue's times (1 + contrast): the texture under it
is kept and its true contrast against the same place without the lesion is exactly `contrast`.
Each method is run on the slice with and without lesions, with the same sampling mask, so the
lesion's effect is isolated: recovered contrast = (mean of the reconstruction with lesion - mean
without, over the disc) / mean of the lesion-free reference over the disc.
"""

from __future__ import annotations

import numpy as np
import torch


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    """Boolean (H, W) disc of `radius` pixels."""
    y, x = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def ring(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    """The background ring around a lesion: between 2 and 3 radii (at least 2 pixels wide)."""
    inner, outer = 2 * radius, max(3 * radius, 2 * radius + 2)
    return disc(shape, centre, outer) & ~disc(shape, centre, inner)


def lesion_sites(
    reference: torch.Tensor, radius: float, count: int, rng: np.random.Generator, tissue: float = 0.3
) -> list[tuple[int, int]]:
    """Up to `count` non-overlapping centres where the lesion and its ring lie in tissue
    (reference above `tissue` x the slice maximum)."""
    h, w = reference.shape
    inside = reference > tissue * float(reference.max())
    reach = int(np.ceil(max(3 * radius, 2 * radius + 2)))
    candidates = [(y, x) for y in range(reach, h - reach) for x in range(reach, w - reach) if inside[y, x]]
    rng.shuffle(candidates)
    sites: list[tuple[int, int]] = []
    for y, x in candidates:
        if len(sites) == count:
            break
        region = disc((h, w), (y, x), reach)
        if not bool(inside[region].all()):
            continue
        if all((y - sy) ** 2 + (x - sx) ** 2 > (2 * reach) ** 2 for sy, sx in sites):
            sites.append((y, x))
    return sites


def insert_lesions(
    image: torch.Tensor, sites: list[tuple[int, int]], radius: float, contrast: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`image` (H, W) with discs scaled by (1 + contrast) at `sites`; returns it and the disc masks."""
    if not -1.0 < contrast:
        raise ValueError(f"contrast must be above -1 (-100%), got {contrast!r}")
    out = image.clone()
    masks = [disc((int(image.shape[0]), int(image.shape[1])), s, radius) for s in sites]
    for m in masks:
        out[m] = out[m] * (1.0 + contrast)
    return out, masks


def recovered_contrast(with_lesion: torch.Tensor, without: torch.Tensor, reference: torch.Tensor,
                       mask: torch.Tensor) -> float:
    """(mean(with_lesion) - mean(without)) / mean(reference) over the lesion disc."""
    return float((with_lesion[mask].mean() - without[mask].mean()) / reference[mask].mean())


def cnr(image: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> float:
    """Contrast-to-noise ratio |mean(lesion) - mean(ring)| / std(ring)."""
    return float((image[mask].mean() - image[background].mean()).abs() / image[background].std().clamp_min(1e-12))


def false_structure(without: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> float:
    """Error energy of a lesion-free reconstruction over a disc, relative to the reference energy there."""
    return float(((without - reference)[mask] ** 2).mean() / (reference[mask] ** 2).mean())
