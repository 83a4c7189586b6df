"""Parameters and FLOPs per slice of each model variant."""

from __future__ import annotations



from bench.common import (
    flops_per_slice,
)
from bundle.networks import VARIANTS, ResidualUNet


def rows(add) -> None:
    """Size and cost of each model variant."""
    for variant, feats in VARIANTS.items():
        net = ResidualUNet(features=feats)
        add("model", f"{variant} parameters", float(sum(p.numel() for p in net.parameters())), "")
        for size in (128, 256):
            add("model", f"{variant} GFLOPs per {size}x{size} slice", flops_per_slice(net, size) / 1e9, "GFLOP")
