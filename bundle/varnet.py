"""The multi-coil network: an unrolled variational network in the E2E-VarNet design (Sriram et
al., MICCAI 2020), built from MONAI's `monai.apps.reconstruction` pieces.

Each cascade is MONAI's `VarNetBlock`: k <- k - w * M (k - y) - F S R(S^H F^H k), with a learned
soft data-consistency weight w and a `ComplexUnet` (MONAI's `BasicUNet` on the coil-combined
complex image as real and imaginary channels) as the regulariser R. The sensitivities S come from
a `ComplexUnet` applied to the low-resolution coil images of the autocalibration lines, divided
by their root-sum-of-squares. The output is the RSS of the coil images of the final k-space, on
the scale of the data (the k-space is divided by a scale before the cascades and the image
multiplied back after).

Why not MONAI's `VariationalNetworkModel` and `CoilSensitivityModel` as they are: the latter
finds the calibration block with a Python loop on one 1D mask shared by the whole batch (a batch
of different masks, or an (H, W) sample mask, is not supported) and indexes past the end of a
fully sampled mask. Here the calibration region of every example comes from
`bundle.physics.mri_sense.acs_window` (1D line masks and 2D sample masks); the cascades are
MONAI's blocks unchanged.

With `sensitivities="espirit"` the network does not learn its sensitivities: it takes the maps
(ESPIRiT from the calibration lines, `bundle.parallel_imaging.sensitivities`, or maps given with
the data; the true maps of simulated coils in training), and with `sense_iterations` > 0 it starts
the cascades from CG-SENSE with those maps (Tikhonov weight learned), its k-space filled in where
nothing was acquired, instead of from the zero-filled k-space. Why: on the real coils the maps a
network learned from 10 calibration lines unfold badly (CG-SENSE with them: 20.9 dB on the
in-vivo brain at 4x, with ESPIRiT's 25.7 dB), and 4 small cascades cannot undo 4x aliasing alone;
the CG steps do the unfolding a physicist's SENSE does, the UNets what SENSE leaves.

With `final_dc` the measured samples replace the final k-space's where they were acquired. Why
(0.13): on the real validation phantoms at 4x the 0.12 output was about 3 % too dark and 2 dB
below PICS's PSNR (`scripts/studies/multicoil_validation.py`).

Tensors are complex: k-space (B, C, H, W), mask (B, 1, 1, W) or (B, 1, H, W) (bool or 0/1);
MONAI's blocks use the real view (B, C, H, W, 2) inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from monai.apps.reconstruction.networks.blocks.varnetblock import VarNetBlock
from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
from torch import nn

from bundle.errors import InputError
from bundle.physics.mri import fft2c, ifft2c
from bundle.physics.mri_sense import CartesianSense, acs_window, norm_per_pixel, rss
from bundle.physics.solvers import regularised_least_squares

SENSITIVITIES = ("learned", "espirit")

# Symmetries of the multi-coil problem for the self-ensemble (`ensemble_coil_images`): exact
# permutations (and conjugation) of k-space that keep a column mask as it is. In the image domain:
# "flip_readout" reverses the readout axis, "conjugate" is x(p) -> conj(x(-p)), and
# "conjugate_flip_readout" both (x(h, w) -> conj(x(h, -w))). The group is closed: each is its own inverse.
SYMMETRIES = ("identity", "flip_readout", "conjugate", "conjugate_flip_readout")

# Named settings: "cpu" trains usefully on a 2-core CPU in under an hour (the shipped model);
# "gpu" is E2E-VarNet-sized for a lent GPU; "learned-cpu" is the 0.11 model (learned maps, no
# CG-SENSE start), kept to read its weights.
VARNET_VARIANTS: Mapping[str, Mapping] = MappingProxyType({
    "cpu": MappingProxyType({"cascades": 4, "features": (8, 8, 16, 32, 64, 8), "sens_features": (4, 4, 8, 16, 32, 4),
                             "sensitivities": "espirit", "sense_iterations": 10, "final_dc": True}),
    "gpu": MappingProxyType({"cascades": 8, "features": (18, 18, 36, 72, 144, 18), "sens_features": (8, 8, 16, 32, 64, 8),
                             "sensitivities": "espirit", "sense_iterations": 10, "final_dc": True}),
    "learned-cpu": MappingProxyType({"cascades": 4, "features": (8, 8, 16, 32, 64, 8),
                                     "sens_features": (4, 4, 8, 16, 32, 4), "sensitivities": "learned",
                                     "sense_iterations": 0, "final_dc": False}),
})


def varnet_variant(variant: str) -> dict:
    """The settings of a named variant ("cpu", "gpu" or "learned-cpu"): VarNet's arguments."""
    if variant not in VARNET_VARIANTS:
        raise InputError(f"unknown varnet variant {variant!r}: expected one of {', '.join(VARNET_VARIANTS)}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in VARNET_VARIANTS[variant].items()}


def _check_features(features: Sequence[int], name: str) -> tuple[int, ...]:
    feats = tuple(int(f) for f in features)
    if len(feats) != 6 or min(feats) < 1:
        raise InputError(f"{name} must be six positive integers (BasicUNet's features), got {list(features)}")
    return feats


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x.contiguous())


def _complex(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(x.contiguous())


def mask_as_grid(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, 1, W) / (B, 1, H, W) / (W,) / (H, W) mask as a (B or 1, 1, H or 1, W) bool tensor."""
    m = mask if mask.dtype == torch.bool else mask > 0.5
    if m.ndim == 1:
        m = m.view(1, 1, 1, -1)
    elif m.ndim == 2:
        m = m.view(1, 1, *m.shape)
    elif m.ndim == 3:
        m = m.unsqueeze(1)
    if m.shape[-1] != shape[1] or m.shape[-2] not in (1, shape[0]):
        raise InputError(f"the mask is {tuple(mask.shape)} but the k-space is {shape[0]} x {shape[1]}")
    return m


def _reverse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x at the negated centred coordinate along `dim`: index i -> (2 (n // 2) - i) mod n, the
    reflection about the centre that `fft2c` / `ifft2c` use (index n // 2 is the origin), in
    k-space and in the image alike."""
    n = x.shape[dim]
    index = (2 * (n // 2) - torch.arange(n, device=x.device)) % n
    return x.index_select(dim, index)


def apply_symmetry(name: str, kspace: torch.Tensor, mask: torch.Tensor,
                   maps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (..., C, H, W) k-space, its mask ((..., 1 or H, W)) and the maps (image domain) under the
    symmetry `name` of `SYMMETRIES`. A k-space reversal is the image's reversal along the same axis;
    conjugating k-space conjugates the image and reverses it along both axes. Exact (permutations)."""
    if name not in SYMMETRIES:
        raise InputError(f"unknown symmetry {name!r}: expected one of {', '.join(SYMMETRIES)}")
    if name in ("flip_readout", "conjugate_flip_readout"):
        kspace = _reverse(kspace, -2)
        mask = _reverse(mask, -2) if mask.shape[-2] > 1 else mask
        maps = None if maps is None else _reverse(maps, -2)
    if name in ("conjugate", "conjugate_flip_readout"):
        kspace = kspace.conj()
        maps = None if maps is None else _reverse(_reverse(maps, -2), -1).conj()
    return kspace.resolve_conj(), mask, None if maps is None else maps.resolve_conj()


def image_symmetry(name: str, images: torch.Tensor) -> torch.Tensor:
    """(..., H, W) complex images under the symmetry `name` (the image side of `apply_symmetry`)."""
    if name in ("flip_readout", "conjugate_flip_readout"):
        images = _reverse(images, -2)
    if name in ("conjugate", "conjugate_flip_readout"):
        images = _reverse(_reverse(images, -2), -1).conj()
    return images.resolve_conj()


class SensitivityNet(nn.Module):
    """Learned coil sensitivities: a `ComplexUnet` refines each coil's low-resolution image of the
    calibration region (coils as batch), then the maps are divided by their RSS (sum_c |S_c|^2 = 1)."""

    def __init__(self, features: Sequence[int]) -> None:
        super().__init__()
        self.unet = ComplexUnet(spatial_dims=2, features=_check_features(features, "sens_features"))

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = kspace.shape
        windows = torch.stack([acs_window(mask[i if mask.shape[0] > 1 else 0], (h, w)) for i in range(b)])
        low = ifft2c(kspace * windows[:, None].to(kspace.real.dtype))
        x = _real(low).reshape(b * c, 1, h, w, 2)
        x = _complex(self.unet(x).reshape(b, c, h, w, 2))
        return x / rss(x, 1).unsqueeze(1).clamp_min(1e-12)


class VarNet(nn.Module):
    """E2E-VarNet with MONAI's `VarNetBlock`s and `ComplexUnet`s (module docstring).

    Args:
        cascades: unrolled iterations (each: soft data consistency + a UNet regulariser).
        features: BasicUNet features of each cascade's regulariser (six numbers).
        sens_features: BasicUNet features of the sensitivity network (used with "learned").
        sensitivities: "learned" (a sensitivity network on the calibration lines) or "espirit"
            (the caller passes the maps: ESPIRiT, maps given with the data, or true simulated maps).
        sense_iterations: CG iterations of the CG-SENSE start (0: start from the zero-filled
            k-space); needs given maps.
        sense_weight: the starting value of the CG-SENSE start's Tikhonov weight (learned).
        final_dc: replace the final k-space by the measured samples where they were acquired
            (hard data consistency after the cascades' soft one), so the output keeps what the
            scanner measured, its noise included, as the RSS reference of a full scan does.
    """

    def __init__(self, cascades: int = 4, features: Sequence[int] = (8, 8, 16, 32, 64, 8),
                 sens_features: Sequence[int] = (4, 4, 8, 16, 32, 4), sensitivities: str = "learned",
                 sense_iterations: int = 0, sense_weight: float = 0.03, final_dc: bool = False) -> None:
        super().__init__()
        if int(cascades) < 1:
            raise InputError(f"cascades must be at least 1, got {cascades!r}")
        if sensitivities not in SENSITIVITIES:
            raise InputError(f"sensitivities must be one of {', '.join(SENSITIVITIES)}, got {sensitivities!r}")
        if not 0 <= int(sense_iterations) <= 100:
            raise InputError(f"sense_iterations must be in [0, 100], got {sense_iterations!r}")
        if int(sense_iterations) and sensitivities == "learned":
            raise InputError("sense_iterations > 0 needs sensitivities: espirit (learned maps unfold badly)")
        if not (isinstance(sense_weight, (int, float)) and 0 < float(sense_weight) < 1e3):
            raise InputError(f"sense_weight must be in (0, 1000), got {sense_weight!r}")
        feats = _check_features(features, "features")
        self.arch: dict = {"network": "VarNet", "cascades": int(cascades), "features": [int(f) for f in feats],
                     "sens_features": [int(f) for f in sens_features], "sensitivities": sensitivities,
                     "sense_iterations": int(sense_iterations), "final_dc": bool(final_dc)}
        self.final_dc = bool(final_dc)
        self.sensitivity = SensitivityNet(sens_features) if sensitivities == "learned" else None
        self.sense_iterations = int(sense_iterations)
        # the CG-SENSE start's weight, learned as its logarithm (positive); a weight on k-space of
        # unit norm per pixel, like the classical baselines' (`bundle.parallel_imaging`)
        self.log_sense_weight = nn.Parameter(torch.tensor(math.log(float(sense_weight)))) if self.sense_iterations else None
        self.cascades = nn.ModuleList(
            [VarNetBlock(ComplexUnet(spatial_dims=2, features=feats)) for _ in range(int(cascades))])

    @staticmethod
    def scale_of(kspace: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, 1): the k-space norm per pixel of each example (so the network sees data
        of the same size whatever the scanner's scale); the output is multiplied back."""
        return norm_per_pixel(kspace).view(-1, 1, 1, 1)

    @property
    def takes_maps(self) -> bool:
        """Whether the caller must pass the coil sensitivities (`sensitivities="espirit"`)."""
        return self.sensitivity is None

    def sense_start(self, y: torch.Tensor, m: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The k-space of the CG-SENSE start: acquired samples kept, the rest from F S x."""
        assert self.log_sense_weight is not None
        op = CartesianSense(maps, m.to(y.real.dtype))
        x0 = torch.zeros(y.shape[0], *y.shape[-2:], dtype=y.dtype, device=y.device)
        x = regularised_least_squares(op, y, x0, self.log_sense_weight.exp(), self.sense_iterations)  # A^H masks y
        return torch.where(m, y, fft2c(x.unsqueeze(1) * maps))

    def reconstruct(self, kspace: torch.Tensor, mask: torch.Tensor,
                    maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) complex acquired k-space, its mask and (with `sensitivities="espirit"`) the
        (B, C, H, W) coil sensitivities -> the (B, 1, H, W) RSS image and the sensitivities used."""
        coils, maps = self.coil_images(kspace, mask, maps)
        return rss(coils, 1).unsqueeze(1), maps

    def coil_images(self, kspace: torch.Tensor, mask: torch.Tensor,
                    maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, C, H, W) complex coil images of `final_kspace` (their RSS is `reconstruct`'s
        image; PICS joined with the network takes them as its prior) and the sensitivities used."""
        k, maps = self.final_kspace(kspace, mask, maps)
        return ifft2c(k), maps

    def final_kspace(self, kspace: torch.Tensor, mask: torch.Tensor,
                     maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, C, H, W) coil k-space after the cascades (and the final data consistency), on
        the data's scale, and the sensitivities used: `reconstruct`'s image is its RSS."""
        if not kspace.is_complex() or kspace.ndim != 4:
            raise InputError(f"the multi-coil network takes complex (B, coils, H, W) k-space, got "
                             f"{kspace.dtype} {tuple(kspace.shape)}")
        h, w = int(kspace.shape[-2]), int(kspace.shape[-1])
        m = mask_as_grid(mask.to(kspace.device), (h, w))
        scale = self.scale_of(kspace)
        y = kspace / scale
        if self.sensitivity is not None:
            maps = self.sensitivity(y, m)
        elif maps is None:
            raise InputError("this multi-coil network takes coil sensitivities (ESPIRiT maps); none were given")
        elif tuple(maps.shape) != tuple(kspace.shape):
            raise InputError(f"the coil sensitivities are {tuple(maps.shape)} but the k-space is {tuple(kspace.shape)}")
        maps = maps.to(device=y.device, dtype=y.dtype)
        ref, smaps, m5 = _real(y), _real(maps), m.unsqueeze(-1)
        k = _real(self.sense_start(y, m, maps)) if self.sense_iterations else ref.clone()
        for cascade in self.cascades:
            k = cascade(k, ref, m5, smaps)
        kc = torch.where(m, y, _complex(k)) if self.final_dc else _complex(k)
        return kc * scale, maps

    def architecture(self) -> dict:
        """The settings its weights fit (stored in the checkpoint's metadata and checked on loading)."""
        return dict(self.arch)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        return self.reconstruct(kspace, mask, maps)[0]


class PrepareMultiCoilBatch:
    """Ignite/MONAI `prepare_batch` for `VarNet`: the network input is the batch's "kspace"
    (complex, masked), the target its "label" (RSS of the fully sampled coils), the "mask" the
    second argument and the "maps" (when the batch has them) the third. The zero-filled RSS stays
    in the batch as "zero_filled" for the baseline's metrics."""

    def __call__(self, batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False,
                 **kwargs) -> tuple:
        def to(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, non_blocking=non_blocking)

        args = (to(batchdata["mask"]),) + ((to(batchdata["maps"]),) if "maps" in batchdata else ())
        return to(batchdata["kspace"]), to(batchdata["label"]), args, {}


def ensemble_coil_images(network: VarNet, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None,
                         symmetries: Sequence[str] = SYMMETRIES) -> tuple[torch.Tensor, torch.Tensor]:
    """`network.coil_images` averaged over symmetries of the problem (a self-ensemble, as in Lim et
    al., EDSR, CVPR-W 2017): the data, mask and maps are transformed (`apply_symmetry`), the network
    runs, its coil images are transformed back and the complex coil images averaged. The
    symmetries permute k-space exactly, so with `final_dc` every pass keeps the measured samples and
    so does the average; the CG-SENSE start is equivariant, the UNets are not, and their errors
    partly average out. Costs one network pass per symmetry. Returns the averaged coil images and
    the maps the identity pass used."""
    total: torch.Tensor | None = None
    used: torch.Tensor | None = None
    for name in symmetries:
        k, m, s = apply_symmetry(name, kspace, mask, maps)
        coils, maps_used = network.coil_images(k, m, s)
        coils = image_symmetry(name, coils)
        total = coils if total is None else total + coils
        if used is None:
            used = image_symmetry(name, maps_used)
    if total is None or used is None:
        raise InputError("the self-ensemble needs at least one symmetry")
    return total / len(symmetries), used
