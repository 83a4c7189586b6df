"""Low-dose radiographs: a Poisson-Gaussian dose model on real radiographs, the demo data (two
computed radiographs of the `pydicom-data` package) and inference on NIfTI radiographs.

The model (Foi et al., IEEE TIP 2008): a radiograph normalised so that its 99.5th percentile is 1
is the expected detector signal; a scan with `incident_photons` photons per pixel at signal 1
detects Poisson(I0 x) + N(0, sigma_e^2) counts, and the low-dose image is counts / I0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.utils import convert_to_tensor
from torch import nn

from bundle.ct_physics import check_dose
from bundle.data import DEMO_DIR, ensure_demo_datalist
from bundle.errors import InputError
from bundle.inference import VolumeReconstructor
from bundle.io import read_dicom_slice, save_nifti_atomic
from bundle.transforms import SliceSeededTransform, percentile_scale

XRAY_DEMO_DIR = DEMO_DIR / "xray"
# Only two radiographs ship in pip packages: training (and, for lack of a third subject, the
# monitoring "validation") on the tibia, test on the chest: a different subject and anatomy.
XRAY_DEMO_FILES = {"cr_tibia.nii.gz": "RG3_UNCR.dcm", "cr_chest.nii.gz": "RG1_UNCR.dcm"}
XRAY_DEMO_SPLIT = {"training": ["cr_tibia.nii.gz"], "validation": ["cr_tibia.nii.gz"], "test": ["cr_chest.nii.gz"]}


def low_dose_image(
    image: torch.Tensor, incident_photons: float, electronic_noise: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """counts / I0 with counts ~ Poisson(I0 * image) + N(0, electronic_noise^2): the image of a
    scan with `incident_photons` per pixel at signal 1 (same shape and dtype as `image`)."""
    check_dose(float(incident_photons), float(electronic_noise))
    expected = incident_photons * image.double().clamp_min(0.0)
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise > 0:
        counts = counts + electronic_noise * torch.randn(counts.shape, generator=generator, dtype=counts.dtype)
    return (counts / incident_photons).to(image.dtype)


class LowDoseRadiographd(SliceSeededTransform):
    """Replace a normalised radiograph by its simulated low-dose version; the original goes to
    `label`. Deterministic noise (seeded by `seed_key`) for validation and test."""

    def __init__(
        self,
        keys: KeysCollection,
        incident_photons: float = 200.0,
        electronic_noise: float = 2.0,
        deterministic: bool = False,
        seed_key: str = "slice_id",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, deterministic, seed_key, label_key, allow_missing_keys)
        self.electronic_noise = float(electronic_noise)
        self.set_dose(incident_photons)

    def set_dose(self, incident_photons: float) -> None:
        check_dose(float(incident_photons), self.electronic_noise)
        self.incident_photons = float(incident_photons)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        g = torch.Generator().manual_seed(self.seed(d, "xray", self.incident_photons))
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False).float()
            d[self.label_key] = image
            d[key] = low_dose_image(image, self.incident_photons, self.electronic_noise, g)
            d["incident_photons"] = self.incident_photons
        return d


def dicom_radiograph_to_nifti(dicom_path: str, out_path: str, downsample: int = 4) -> str:
    """A DICOM radiograph -> (X, Y, 1) NIfTI of its detector signal (MONOCHROME1 inverted,
    rescale applied), block-averaged by `downsample`, with the pixel spacing in mm."""
    ds, pixels = read_dicom_slice(dicom_path, "radiograph")
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() - pixels
    f = int(downsample)
    h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
    pixels = pixels[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    spacing = [1.0, 1.0]  # unknown (the pydicom-data radiographs have none, or 0.000)
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, tag, None)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            spacing = [float(v) for v in value]
            break
    dr, dc = (v * f for v in spacing)
    img = nib.Nifti1Image(pixels.T[:, :, None].astype(np.float32), np.diag([dc, dr, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    save_nifti_atomic(img, out_path)
    return out_path


def ensure_xray_datalist(datalist: str, dataset_dir: str) -> str:
    """Write the radiograph demo (converted from pydicom-data) and its datalist when they are the
    ones asked for and missing; otherwise check that they exist."""

    def content() -> dict:
        from pydicom.data import get_testdata_file

        for name, dicom in XRAY_DEMO_FILES.items():
            if not (Path(dataset_dir) / name).exists():
                src = get_testdata_file(dicom)
                if src is None:
                    raise InputError(f"{name}: needs {dicom} of the pydicom-data package (pip install pydicom-data)")
                dicom_radiograph_to_nifti(src, str(Path(dataset_dir) / name))
        return {k: [{"image": n} for n in v] for k, v in XRAY_DEMO_SPLIT.items()}

    return ensure_demo_datalist(datalist, dataset_dir, XRAY_DEMO_DIR, content, create_dir=True)


class RadiographDenoiser(VolumeReconstructor):
    """Simulate a low-dose acquisition of NIfTI radiographs stored as (X, Y, 1) and denoise it.

    Writes `<name>_recon.nii.gz` (network) and `<name>_low_dose.nii.gz`, on the input's intensity
    scale, with its shape and geometry. The noise is seeded by file, so runs repeat.
    """

    output_suffixes = ("_recon", "_low_dose")
    accepts_prospective = False

    def __init__(
        self,
        network: nn.Module,
        incident_photons: float = 200.0,
        electronic_noise: float = 2.0,
        percentile: float = 99.5,
        device: str | torch.device = "cpu",
        amp: bool = False,
        progress: bool = True,
    ) -> None:
        self._set_runtime(network, 2, 1, device, amp, progress)  # one (X, Y, 1) radiograph at a time
        self.noise = LowDoseRadiographd("image", incident_photons, electronic_noise, deterministic=True)
        self.percentile = percentile

    @torch.no_grad()
    def reconstruct(self, volume: np.ndarray, name: str) -> dict[str, np.ndarray]:
        vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        scale = percentile_scale(vol, self.percentile)
        if scale <= 0:
            raise InputError(f"{name}: no positive intensity to normalise")
        recon, noisy = torch.zeros_like(vol), torch.zeros_like(vol)
        for z in range(vol.shape[2]):
            d = self.noise({"image": (vol[:, :, z] / scale)[None], "slice_id": f"{name}:{z}"})
            with torch.autocast(self.device.type, enabled=self.amp):
                pred = self.network(d["image"][None].to(self.device))
            recon[:, :, z] = pred[0, 0].float().cpu() * scale
            noisy[:, :, z] = d["image"][0] * scale
        return {"recon": recon.numpy(), "low_dose": noisy.numpy()}
