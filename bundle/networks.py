"""The reconstruction network: a residual 2D BasicUNet with an optional data-consistency step."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import MappingProxyType
from typing import Optional

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

from bundle.errors import InputError, as_bool
from bundle.physics.mri import data_consistency

# Named feature sets of the residual BasicUNet: "light" has a quarter of the parameters and FLOPs,
# for small machines (its quality and speed are in the model card).
VARIANTS = MappingProxyType({"standard": (16, 16, 32, 64, 128, 16), "light": (8, 8, 16, 32, 64, 8)})


def variant_features(variant: str) -> list[int]:
    """The BasicUNet features of a model variant ("standard" or "light")."""
    if variant not in VARIANTS:
        raise InputError(f"unknown model_variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return list(VARIANTS[variant])


class ResidualUNet(nn.Module):
    """`pred = zero_filled + BasicUNet(zero_filled)`, then optionally hard data consistency;
    with `cascades > 1`, that block is repeated on its own output (a cascade of residual UNets with
    data consistency between them, as in Schlemper et al. 2018).

    Any in-plane size works: the input is zero-padded to a multiple of 16 (BasicUNet halves the
    size four times) and the output cropped back.

    Args:
        features: BasicUNet's six feature numbers.
        dropout: dropout probability in the UNet blocks.
        norm: normalisation layer ("batch", "instance", ...).
        data_consistency: if True and k-space is given, acquired k-space lines replace the
            network's own (the output is the magnitude of that image).
        cascades: number of residual UNet (+ data consistency) blocks in sequence.

    Inputs:
        image: (B, 1, H, W) zero-filled magnitude image.
        kspace: optional (B, 2, H, W) acquired k-space as real and imaginary channels.
        mask: optional (B, 1, 1, W) acquired lines (1) and missing lines (0).

    Returns:
        (B, 1, H, W) reconstructed magnitude image.
    """

    def __init__(
        self,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
        norm: str | tuple = "instance",
        data_consistency: bool = True,
        cascades: int = 1,
    ) -> None:
        super().__init__()
        if int(cascades) < 1:
            raise InputError(f"cascades must be at least 1, got {cascades!r}")
        self.unets = nn.ModuleList(
            BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(features), dropout=dropout, norm=norm)
            for _ in range(int(cascades))
        )
        self.data_consistency = as_bool(data_consistency, "data_consistency")
        self.divisor = 16

    def forward(
        self, image: torch.Tensor, kspace: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError("expected a (B, 1, H, W) image, got shape " + str(image.shape))
        h, w = image.shape[-2], image.shape[-1]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        k: Optional[torch.Tensor] = None
        m: Optional[torch.Tensor] = None
        if self.data_consistency and kspace is not None and mask is not None:  # written for TorchScript
            k = torch.complex(kspace[:, 0:1].float(), kspace[:, 1:2].float())
            m = mask
        pred = image
        for unet in self.unets:
            x = F.pad(pred, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            pred = pred + unet(x)[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
            if k is not None and m is not None:
                pred = data_consistency(pred.float(), k, m).abs().to(image.dtype)
        return pred


def load_checkpoint(network: nn.Module, path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load weights into `network` from a checkpoint (a state dict or a dict with a "model" entry).

    Loaded with `weights_only=True`; a missing, corrupt or mismatched checkpoint raises an
    `InputError` naming the file.
    """
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise InputError(f"checkpoint {path}: corrupt or not a PyTorch checkpoint ({type(e).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"checkpoint {path}: does not match network_def ({first})") from None
    return network
