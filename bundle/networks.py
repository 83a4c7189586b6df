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


def variant_features(variant: str | None, ckpt_path: str | None = None) -> list[int]:
    """The BasicUNet features of a model variant ("standard" or "light"); with variant "auto" (or
    None), those the checkpoint at `ckpt_path` was trained with (its metadata), else standard."""
    if variant in (None, "auto"):
        meta = checkpoint_metadata(ckpt_path) if ckpt_path and os.path.isfile(ckpt_path) else None
        features = ((meta or {}).get("architecture") or {}).get("features")
        return [int(f) for f in features] if features else list(VARIANTS["standard"])
    if variant not in VARIANTS:
        raise InputError(f"unknown model_variant {variant!r}: expected one of auto, {', '.join(VARIANTS)}")
    return list(VARIANTS[variant])


def variant_name(features) -> str:
    """"standard", "light" or "custom" for a list of BasicUNet features."""
    return next((name for name, f in VARIANTS.items() if list(f) == [int(x) for x in features]), "custom")


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
        guide_channels: extra input channels that guide the UNets but are not reconstructed (PET's
            anatomical MR image, `bundle.transforms.PETScanBatch(anatomy=True)`): each UNet sees
            the current image and the guide, and the residual is added to the image only.

    Inputs:
        image: (B, 1 + guide_channels, H, W) zero-filled magnitude image (then the guide).
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
        guide_channels: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(guide_channels, bool) or not isinstance(guide_channels, int) or not 0 <= guide_channels <= 8:
            raise InputError(f"guide_channels: expected a whole number in [0, 8], got {guide_channels!r}")
        if isinstance(cascades, bool) or not isinstance(cascades, int) or cascades < 1:
            raise InputError(f"cascades: expected a whole number >= 1, got {cascades!r}")
        if not isinstance(features, (list, tuple)) or len(features) != 6 or \
                not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in features):
            raise InputError(f"features: expected six whole numbers >= 1 (BasicUNet's), got {features!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise InputError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        try:
            self.unets = nn.ModuleList(
                BasicUNet(spatial_dims=2, in_channels=1 + guide_channels, out_channels=1, features=tuple(features), dropout=dropout,
                          norm=norm)
                for _ in range(int(cascades))
            )
        except (ValueError, KeyError, TypeError, LookupError) as e:  # MONAI's own message for an unknown norm
            raise InputError(f"norm: {norm!r} is not a normalisation MONAI knows (instance, batch, ...; "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        self.data_consistency = as_bool(data_consistency, "data_consistency")
        self.divisor = 16
        # what the weights fit (plain types, so TorchScript leaves them alone): `architecture()`
        self.arch_features: list[int] = [int(f) for f in features]
        self.arch_norm: str = str(norm)
        self.guide_channels: int = int(guide_channels)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs) -> None:
        # what the loaded weights say they are (`with_metadata`), whoever loads them (MONAI Label
        # calls load_state_dict itself): the inferers check it before they reconstruct
        if prefix == "":
            self.__dict__["loaded_metadata"] = dict(local_metadata.get(METADATA_KEY) or {})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    @torch.jit.unused
    def architecture(self) -> dict:
        """The settings its weights fit (stored in the checkpoint's metadata and checked on loading)."""
        return {"network": "ResidualUNet", "features": list(self.arch_features), "norm": self.arch_norm,
                "cascades": len(self.unets), "data_consistency": self.data_consistency,
                "guide_channels": self.guide_channels}

    def forward(
        self, image: torch.Tensor, kspace: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 1 + self.guide_channels:
            raise ValueError("expected a (B, " + str(1 + self.guide_channels) + ", H, W) image, got shape "
                             + str(image.shape))
        h, w = image.shape[-2], image.shape[-1]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        k: Optional[torch.Tensor] = None
        m: Optional[torch.Tensor] = None
        if self.data_consistency and kspace is not None and mask is not None:  # written for TorchScript
            k = torch.complex(kspace[:, 0:1].float(), kspace[:, 1:2].float())
            m = mask
        guide = image[:, 1:]
        pred = image[:, :1]
        for unet in self.unets:
            x = pred if self.guide_channels == 0 else torch.cat([pred, guide], 1)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            pred = pred + unet(x)[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
            if k is not None and m is not None:
                pred = data_consistency(pred.float(), k, m).abs().to(image.dtype)
        return pred


def safe_load(path: str, map_location: str | torch.device = "cpu"):
    """`torch.load(weights_only=True)`: tensors and plain containers only, never code from a pickle;
    anything else (or a corrupt file) is one `InputError` naming the file, and torch's warnings
    about the pickle protocol of a foreign file stay quiet."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise InputError(f"checkpoint {path}: corrupt or not a PyTorch checkpoint ({type(e).__name__})") from None


METADATA_KEY = "bundle"  # in the state dict's own `_metadata[""]`, beside torch's version number


def metadata_of(state) -> dict | None:
    """What a loaded checkpoint says it is (modality, architecture, acquisition, normalisation,
    bundle version, score), or None. The weights stay a plain state dict, which MONAI's
    `ckpt_export`, MONAI Label and `load_state_dict` read as they are: the metadata rides in the
    state dict's `_metadata` attribute (torch keeps it through save and `weights_only` load, and
    modules read only their "version" from it)."""
    if isinstance(state, dict) and isinstance(state.get("metadata"), dict):  # {"model": ..., "metadata": ...}
        return dict(state["metadata"])
    meta = (getattr(state, "_metadata", None) or {}).get("", {}).get(METADATA_KEY)
    return dict(meta) if isinstance(meta, dict) else None


def with_metadata(state_dict: dict, metadata: dict) -> dict:
    """`state_dict` carrying `metadata` (see `metadata_of`)."""
    from collections import OrderedDict

    out = OrderedDict(state_dict)
    out._metadata = OrderedDict(getattr(state_dict, "_metadata", None) or {})  # type: ignore[attr-defined]
    out._metadata[""] = {**out._metadata.get("", {"version": 1}), METADATA_KEY: dict(metadata)}  # type: ignore[attr-defined]
    return out


def checkpoint_metadata(path: str) -> dict | None:
    """What the checkpoint at `path` says it is (`metadata_of`), or None for bare weights."""
    return metadata_of(safe_load(path))


def _describe(modality, arch: dict) -> str:
    feats = arch.get("features")
    variant = f" {variant_name(feats)}" if arch.get("network") == "ResidualUNet" and feats else ""
    details = ", ".join(f"{k} {v}" for k, v in arch.items() if k != "network")
    return f"{modality}{variant} {arch.get('network', '?')} ({details})"


def check_loaded_weights(network, modality: str) -> None:
    """An `InputError` if the weights loaded into `network` say they are for another modality
    (for tools that load the weights themselves, such as MONAI Label: its `model_filename` can
    name any file in models/). Weights without metadata pass."""
    found = (getattr(network, "__dict__", {}).get("loaded_metadata") or {}).get("modality")
    if found and found != modality:
        raise InputError(f"weights: the network holds {found} weights, this config reconstructs {modality}; "
                         f"choose the {modality} model file")


def check_metadata(path: str, metadata: dict, network: nn.Module, modality: str | None) -> None:
    """An `InputError` saying what was expected and what was found when the checkpoint's metadata
    does not fit `network` (its `architecture()`) or `modality`."""
    found_modality = metadata.get("modality")
    found = dict(metadata.get("architecture") or {})
    if found.get("network") == "VarNet":  # written before 0.12, when every VarNet learned its maps
        found.setdefault("sensitivities", "learned")
        found.setdefault("sense_iterations", 0)
        found.setdefault("final_dc", False)  # written before 0.13
    describe = getattr(network, "architecture", None)
    expected = dict(describe()) if callable(describe) else {}
    keys = [k for k in expected if k in found]
    wrong_arch = [k for k in keys if _norm(expected[k]) != _norm(found[k])]
    if (modality and found_modality and modality != found_modality) or wrong_arch:
        hint = ""
        if found.get("network") == "ResidualUNet" and "features" in wrong_arch and \
                variant_name(found.get("features", [])) != "custom":
            hint = f"; for these weights use --model_variant {variant_name(found['features'])} (or auto)"
        if found.get("network") == "VarNet" and found.get("sensitivities") == "learned" and "sensitivities" in wrong_arch:
            hint = "; for these weights (learned maps, before 0.12) use --varnet_variant learned-cpu"
        elif found.get("network") == "VarNet" and wrong_arch == ["final_dc"]:
            hint = (f"; for these weights add --multicoil_final_dc {str(found['final_dc']).lower()} (inference) "
                    f"or --final_dc {str(found['final_dc']).lower()} (training)")
        raise InputError(f"checkpoint {path}: expected {_describe(modality or found_modality, expected)}, found "
                         f"{_describe(found_modality, found)} weights{hint}")


def _norm(value):
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def load_checkpoint(network: nn.Module, path: str, map_location: str | torch.device = "cpu",
                    modality: str | None = None) -> nn.Module:
    """Load weights into `network` from a checkpoint (a state dict, or a dict with a "model" entry
    and the "metadata" that says what the weights are).

    Loaded with `weights_only=True`; a missing, corrupt or mismatched checkpoint raises an
    `InputError` naming the file. With metadata, the modality (if given) and the network's
    `architecture()` must match it: the error says what was expected and what was found.
    """
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path}: file not found")
    state = safe_load(path, map_location)
    metadata = metadata_of(state)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if metadata is not None:
        check_metadata(path, metadata, network, modality)
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"checkpoint {path}: does not match network_def ({first})") from None
    return network
