"""fastMRI HDF5 raw k-space: checked reading (MONAI's `FastMRIReader`), coil combination and crop.

A fastMRI file holds `kspace` (complex; (slices, H, W) single-coil or (slices, coils, H, W)
multi-coil, readout along H, phase encoding along W), usually `reconstruction_rss` or
`reconstruction_esc` (the fully sampled reference, centre-cropped, e.g. 320 x 320), an
`ismrmrd_header` (XML) and attributes `max`, `norm`, `acquisition`. Files of fastMRI's test and
challenge sets are prospectively undersampled: their k-space is zero outside a `mask` of the
acquired phase-encode lines (W,), and they have no reference.

Two uses (chosen by the file, not by an option):
- fully sampled file: the image is the reference (the stored reconstruction, or the root-sum-of-
  squares of the coil images cropped to the reconstruction size when none is stored). It is then
  undersampled retrospectively like any image (`UndersampleKspaced`: the single-coil emulation
  that fastMRI's single-coil track also uses), so such files train and evaluate through the same
  configs as NIfTI volumes.
- prospectively undersampled file (a `mask`): the zero-filled root-sum-of-squares image of the
  acquired data is the network's input, on the k-space grid (cropped after the network, so the
  mask still describes its k-space); there is no reference. A 2D mask (H, W) is accepted too
  (e.g. a Poisson-disc sampled slice of a 3D acquisition).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from bundle.errors import InputError
from bundle.physics.mri import ifft2c
from bundle.physics.mri_sense import rss

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
ISMRMRD_NS = MappingProxyType({"m": "http://www.ismrm.org/ISMRMRD"})


@dataclass
class FastMRIFile:
    path: str
    kspace: np.ndarray  # (S, C, H, W) complex64; C = 1 for single-coil files
    multicoil: bool
    mask: np.ndarray | None  # (W,) or (H, W) bool, for prospectively undersampled files
    target: np.ndarray | None  # (S, h, w) float32 reference, if stored
    target_key: str | None
    crop: tuple[int, int] | None  # the reconstruction size
    spacing: tuple[float, float, float]  # mm: (h, w, slice)
    attrs: dict = field(default_factory=dict)

    @property
    def prospective(self) -> bool:
        return self.mask is not None


def _header_geometry(header) -> tuple[tuple[int, int] | None, tuple[float, float, float]]:
    """Reconstruction matrix (x, y) and voxel size (mm) from the ISMRMRD XML header, if readable."""
    try:
        text = header.decode() if isinstance(header, (bytes, np.bytes_)) else str(header)
        root = ET.fromstring(text)
        ns = dict(ISMRMRD_NS)

        def value(path: str) -> str:
            node = root.find(f"m:encoding/m:reconSpace/{path}", ns)
            if node is None or node.text is None:
                raise ValueError(f"no {path} in the ISMRMRD header")
            return node.text

        matrix = [int(value(f"m:matrixSize/m:{a}")) for a in ("x", "y", "z")]
        fov = [float(value(f"m:fieldOfView_mm/m:{a}")) for a in ("x", "y", "z")]
        return (matrix[0], matrix[1]), (fov[0] / matrix[0], fov[1] / matrix[1], fov[2] / max(matrix[2], 1))
    except Exception:  # no header, or not the fastMRI/ISMRMRD layout: keep the defaults
        return None, (1.0, 1.0, 1.0)


def read_fastmri(path: str) -> FastMRIFile:
    """Read and check a fastMRI HDF5 file. One-line `InputError`s naming the file for: missing or
    unreadable file, no `kspace`, k-space that is not complex or not 3D/4D, a `mask` whose size
    does not match the k-space, a reference that is not 3D real, NaN or infinite values."""
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        raw = FastMRIReader().read(path)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as fastMRI HDF5 ({type(e).__name__}: {str(e)[:120]})") from None
    if "kspace" not in raw:
        raise InputError(f"{path}: no 'kspace' dataset (found: {', '.join(sorted(map(str, raw))) or 'nothing'})")
    kspace = np.asarray(raw["kspace"])
    if not np.iscomplexobj(kspace):
        raise InputError(f"{path}: 'kspace' must be complex, got {kspace.dtype}")
    if kspace.ndim not in (3, 4):
        raise InputError(f"{path}: 'kspace' must be (slices, H, W) or (slices, coils, H, W), got shape {kspace.shape}")
    multicoil = kspace.ndim == 4
    kspace = kspace.astype(np.complex64)[:, None] if not multicoil else kspace.astype(np.complex64)
    if not np.isfinite(kspace).all():
        raise InputError(f"{path}: 'kspace' contains NaN or infinite values")
    h, w = kspace.shape[-2:]
    mask = None
    if "mask" in raw:
        mask = np.asarray(raw["mask"]).astype(bool)
        if mask.shape not in ((w,), (h, w)):
            raise InputError(f"{path}: 'mask' has shape {mask.shape}, expected ({w},) or ({h}, {w}) for k-space {kspace.shape[-2:]}")
        if not mask.any():
            raise InputError(f"{path}: 'mask' selects no k-space samples")
    target, target_key = None, None
    for key in TARGET_KEYS:
        if key in raw:
            target = np.asarray(raw[key])
            target_key = key
            if target.ndim != 3 or np.iscomplexobj(target) or target.shape[0] != kspace.shape[0]:
                raise InputError(f"{path}: '{key}' must be real (slices, h, w) with {kspace.shape[0]} slices, got {target.dtype} {target.shape}")
            target = target.astype(np.float32)
            break
    recon_size, spacing = _header_geometry(raw.get("ismrmrd_header"))
    crop = tuple(target.shape[-2:]) if target is not None else recon_size
    if crop is not None:
        crop = (min(crop[0], h), min(crop[1], w))
    attrs = {k: raw[k] for k in ("max", "norm", "acquisition", "patient_id", "acceleration") if k in raw}
    return FastMRIFile(path, kspace, multicoil, mask, target, target_key, crop, spacing, attrs)


def center_crop(x: np.ndarray | torch.Tensor, size: tuple[int, int] | None):
    """The central (h, w) of the last two axes (fastMRI's crop of the oversampled readout)."""
    if size is None:
        return x
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def coil_combined(f: FastMRIFile, masked: bool, crop: bool = True) -> np.ndarray:
    """(S, h, w) float32: root-sum-of-squares of the coil images (the magnitude for single-coil),
    cropped to the reconstruction size (or (S, H, W) on the k-space grid without `crop`); with
    `masked`, of the k-space times the file's mask."""
    out = []
    for s in range(f.kspace.shape[0]):  # one slice at a time: multi-coil files are large
        k = torch.from_numpy(f.kspace[s])
        if masked and f.mask is not None:
            k = k * torch.from_numpy(mask_2d(f)).to(k.real.dtype)
        image = rss(ifft2c(k), dim=0)
        out.append((center_crop(image, f.crop) if crop else image).numpy())
    return np.stack(out).astype(np.float32)


def mask_2d(f: FastMRIFile) -> np.ndarray:
    """The file's mask on the (H, W) k-space grid (a 1D mask of phase-encode lines, repeated)."""
    if f.mask is None:
        return np.ones(f.kspace.shape[-2:], dtype=bool)
    return np.broadcast_to(f.mask if f.mask.ndim == 2 else f.mask[None, :], f.kspace.shape[-2:]).copy()


def reference_image(f: FastMRIFile) -> np.ndarray:
    """The fully sampled (S, h, w) image: the stored reconstruction, else computed from k-space.
    An `InputError` for prospectively undersampled files, which have none."""
    if f.target is not None:
        return f.target
    if f.prospective:
        raise InputError(f"{f.path}: prospectively undersampled (it has a 'mask') and no reference image: "
                         "it can be reconstructed (inference) but not used for training or evaluation")
    return coil_combined(f, masked=False)


def as_volume(images: np.ndarray) -> np.ndarray:
    """(S, h, w) slices -> (h, w, S), the bundle's (X, Y, Z) with slices on the axial axis and the
    phase-encode direction (fastMRI's W) on Y, the axis the k-space lines run along in the bundle."""
    return np.ascontiguousarray(np.transpose(images, (1, 2, 0)))


def volume_affine(f: FastMRIFile) -> np.ndarray:
    """A voxel-to-world affine with the header's voxel size (fastMRI files carry no patient position)."""
    return np.diag([*f.spacing, 1.0])


def ismrmrd_header(encoded: tuple[int, int], recon: tuple[int, int], fov_mm: tuple[float, float, float]) -> bytes:
    """A minimal ISMRMRD XML header with the encoded and reconstructed matrix and field of view."""
    def space(tag: str, m: tuple[int, int], fov: tuple[float, float, float]) -> str:
        return (f"<{tag}><matrixSize><x>{m[0]}</x><y>{m[1]}</y><z>1</z></matrixSize>"
                f"<fieldOfView_mm><x>{fov[0]}</x><y>{fov[1]}</y><z>{fov[2]}</z></fieldOfView_mm></{tag}>")

    enc_fov = (fov_mm[0] * encoded[0] / recon[0], fov_mm[1] * encoded[1] / recon[1], fov_mm[2])
    xml = (f'<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="{ISMRMRD_NS["m"]}"><encoding>'
           f"{space('encodedSpace', encoded, enc_fov)}{space('reconSpace', recon, fov_mm)}</encoding></ismrmrdHeader>")
    return xml.encode()


def write_fastmri(
    path: str,
    kspace: np.ndarray,
    mask: np.ndarray | None = None,
    recon_size: tuple[int, int] | None = None,
    fov_mm: tuple[float, float, float] | None = None,
    acquisition: str = "unknown",
) -> str:
    """Write k-space (S, [C,] H, W) as a fastMRI-format HDF5 file, atomically: `kspace`, the
    `ismrmrd_header` (when `recon_size` and `fov_mm` are given), attributes `acquisition`, `norm`,
    `max`; a prospectively undersampled acquisition gets its `mask` and no reference, a fully
    sampled one gets `reconstruction_rss` (root-sum-of-squares, cropped to `recon_size`)."""
    import h5py

    from bundle.data.io import atomic_output

    kspace = np.asarray(kspace).astype(np.complex64)
    coils = kspace if kspace.ndim == 4 else kspace[:, None]
    images = rss(ifft2c(torch.from_numpy(coils)), dim=1).numpy()
    crop = recon_size or tuple(kspace.shape[-2:])
    target = center_crop(images, crop).astype(np.float32)
    with atomic_output(path, ".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=kspace)
            if mask is not None:
                f.create_dataset("mask", data=np.asarray(mask, dtype=bool))
            else:
                f.create_dataset("reconstruction_rss", data=target)
            if recon_size is not None and fov_mm is not None:
                f.create_dataset("ismrmrd_header", data=ismrmrd_header(tuple(kspace.shape[-2:]), recon_size, fov_mm))
            f.attrs["acquisition"] = acquisition
            f.attrs["norm"] = float(np.linalg.norm(target))
            f.attrs["max"] = float(target.max())
    return path
