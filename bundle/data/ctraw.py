"""Measured CT projections: readers for the generic sinogram + geometry sidecar, the HTC2022
MATLAB files and APS Data Exchange HDF5 (raw counts with flats and darks), into one
`MeasuredScan`: line integrals (slices, views, detectors) and the fan- or parallel-beam geometry
(`bundle.physics.ct_fan`, `bundle.physics.ct_geometry`) of the image grid to reconstruct.

Every problem is an `InputError` naming the file, raised before anything is written.

The generic form is `<name>_sinogram.npy` (views x detectors float line integrals, or slices x
views x detectors) with `<name>_geometry.json`:

    {"geometry": "fan_flat" or "parallel", "angles_deg": [...], "detector_count": 560,
     "detector_spacing_mm": 0.2, "detector_offset_mm": 0.0 (optional),
     "source_origin_mm": 410.66, "source_detector_mm": 553.74 (fan only),
     "image_size": [512, 512], "pixel_mm": 0.1483}

in the conventions of `bundle.physics.ct_fan` (README, "Measured CT").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from bundle.errors import InputError
from bundle.physics.ct import physical_memory
from bundle.physics.ct_fan import FanBeamGeometry
from bundle.physics.ct_geometry import ParallelBeamGeometry

SINOGRAM_SUFFIX = "_sinogram.npy"
GEOMETRY_SUFFIX = "_geometry.json"
GEOMETRY_KEYS = ("geometry", "angles_deg", "detector_count", "detector_spacing_mm", "image_size", "pixel_mm")
FAN_KEYS = ("source_origin_mm", "source_detector_mm")
# bytes per image pixel that a reconstruction holds at its peak (PDHG's images and dual variables,
# the FBP and the network's feature maps on one slice) and per sinogram bin: the memory check
BYTES_PER_PIXEL = 4 * 64
BYTES_PER_BIN = 4 * 8


@dataclass
class MeasuredScan:
    """A measured CT scan ready to reconstruct.

    Attributes:
        path: the file read.
        sinogram: (slices, views, detectors) float32 line integrals (-log of normalised counts).
        geometry: the `FanBeamGeometry` or `ParallelBeamGeometry` of each slice, image grid included.
        format: "sinogram", "htc2022" or "dxchange".
        reference: (slices, H, W) full-data reconstruction in 1/mm shipped beside the scan (HTC2022), or None.
        segmentation: (slices, H, W) uint8 segmentation shipped beside the scan, or None.
        notes: what the reader estimated (e.g. the rotation centre), for the log.
    """

    path: str
    sinogram: np.ndarray
    geometry: FanBeamGeometry | ParallelBeamGeometry
    format: str
    reference: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    notes: str = ""

    @property
    def slices(self) -> int:
        return int(self.sinogram.shape[0])


def is_sinogram_file(path: str) -> bool:
    return str(path).endswith(SINOGRAM_SUFFIX)


HTC_COMPANIONS = ("_recon_fbp.mat", "_recon_fbp_seg.mat")  # the organisers' reconstruction and segmentation


def is_htc_file(path: str) -> bool:
    """A `.mat` scan; the organisers' reconstructions and segmentations beside the scans are not inputs."""
    p = str(path)
    return p.endswith(".mat") and not p.endswith(HTC_COMPANIONS)


def is_dxchange(path: str) -> bool:
    """An HDF5 file with the Data Exchange group `exchange/data`."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "exchange" in f and "data" in f["exchange"]
    except (OSError, ValueError):
        return False


def check_memory(path: str, geom) -> None:
    """An `InputError` if reconstructing one slice of `geom` needs more memory than this machine has."""
    (h, w) = geom.image_shape
    need = h * w * BYTES_PER_PIXEL + geom.n_views * geom.n_det * BYTES_PER_BIN
    total = physical_memory() or 2**40
    if need > total / 2:
        raise InputError(f"{path}: image grid {h} x {w} ({h * w:.3g} pixels) with {geom.n_views} views needs about "
                         f"{need / 2**30:.1f} GiB to reconstruct; this machine has {total / 2**30:.1f} GiB")


def _number(path: str, spec: dict, key: str, positive: bool = True) -> float:
    value = spec[key]
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{path}: {key} must be finite, got {value!r}")
    if positive and v <= 0:
        raise InputError(f"{path}: {key} must be positive, got {value!r}")
    return v


def geometry_from_json(path: str, views: int | None = None, detectors: int | None = None,
                       sinogram_name: str = "the sinogram") -> FanBeamGeometry | ParallelBeamGeometry:
    """The geometry of a `<name>_geometry.json` sidecar (module docstring), checked against the
    sinogram's `views` and `detectors` when given."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: expected a JSON object with the keys {', '.join(GEOMETRY_KEYS)}")
    kind = spec.get("geometry")
    keys = GEOMETRY_KEYS + (FAN_KEYS if kind == "fan_flat" else ())
    missing = [k for k in keys if k not in spec]
    if missing:
        raise InputError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if kind not in ("fan_flat", "parallel"):
        raise InputError(f"{path}: geometry must be 'fan_flat' or 'parallel', got {kind!r}")
    angles = spec["angles_deg"]
    if not isinstance(angles, list) or not angles or not all(isinstance(a, (int, float)) for a in angles):
        raise InputError(f"{path}: angles_deg must be a non-empty list of numbers (degrees)")
    if not all(math.isfinite(a) for a in angles):
        raise InputError(f"{path}: angles_deg contains NaN or infinite values")
    count = spec["detector_count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"{path}: detector_count must be a positive whole number, got {count!r}")
    size = spec["image_size"]
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 for s in size) or min(size) < 2):
        raise InputError(f"{path}: image_size must be [H, W], two whole numbers >= 2, got {size!r}")
    spacing = _number(path, spec, "detector_spacing_mm")
    pixel = _number(path, spec, "pixel_mm")
    offset = _number(path, {"detector_offset_mm": spec.get("detector_offset_mm", 0.0)}, "detector_offset_mm",
                     positive=False)
    if views is not None and len(angles) != views:
        raise InputError(f"{path}: {len(angles)} angles in angles_deg but {sinogram_name} has {views} views")
    if detectors is not None and count != detectors:
        raise InputError(f"{path}: detector_count {count} but {sinogram_name} has {detectors} detectors")
    try:
        if kind == "fan_flat":
            so = _number(path, spec, "source_origin_mm")
            sd = _number(path, spec, "source_detector_mm")
            if sd < so:
                raise InputError(f"source_detector_mm {sd:g} is smaller than source_origin_mm {so:g}")
            geom: FanBeamGeometry | ParallelBeamGeometry = FanBeamGeometry(
                (size[0], size[1]), (pixel, pixel), tuple(angles), count, spacing, so, sd, offset)
        else:
            geom = ParallelBeamGeometry((size[0], size[1]), (pixel, pixel), n_views=len(angles),
                                        n_detectors=count, detector_spacing=spacing, angles_deg=tuple(angles),
                                        detector_offset=offset)
    except InputError as e:
        message = str(e)
        raise InputError(message if message.startswith(path) else f"{path}: {message}") from None
    check_memory(path, geom)
    return geom


def _check_sinogram_values(path: str, sino: np.ndarray) -> np.ndarray:
    if not np.issubdtype(sino.dtype, np.floating):
        raise InputError(f"{path}: expected floating-point line integrals, got dtype {sino.dtype}")
    if not np.isfinite(sino).all():
        raise InputError(f"{path}: contains NaN or infinite values")
    return np.ascontiguousarray(sino, dtype=np.float32)


def read_sinogram_npy(path: str) -> MeasuredScan:
    """`<name>_sinogram.npy` (views x detectors, or slices x views x detectors) and its
    `<name>_geometry.json`."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    geometry_path = path[: -len(SINOGRAM_SUFFIX)] + GEOMETRY_SUFFIX
    if not os.path.isfile(geometry_path):
        raise InputError(f"{path}: no geometry file {os.path.basename(geometry_path)} beside it (its JSON schema is "
                         "in the README, 'Measured CT')")
    try:
        sino = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as a .npy array ({type(e).__name__})") from None
    if sino.ndim == 2:
        sino = sino[None]
    if sino.ndim != 3 or min(sino.shape) < 1:
        raise InputError(f"{path}: expected (views, detectors) or (slices, views, detectors), got shape {sino.shape}")
    sino = _check_sinogram_values(path, sino)
    geom = geometry_from_json(geometry_path, sino.shape[1], sino.shape[2], os.path.basename(path))
    return MeasuredScan(path, sino, geom, "sinogram")


def _load_mat(path: str) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError:
        raise InputError(f"{path}: MATLAB v7.3 (HDF5) file; save it with -v7") from None
    except Exception as e:
        raise InputError(f"{path}: cannot be read as a MATLAB file ({type(e).__name__})") from None


def _htc_companion(path: str, suffix: str, key: str, scale: float) -> np.ndarray | None:
    """The organisers' full-data reconstruction or segmentation beside an HTC2022 scan, if present."""
    stem = path[: -len(".mat")]
    for base in (stem, stem.replace("_limited", "_full")):
        other = base + suffix
        if os.path.isfile(other):
            data = _load_mat(other)
            if key not in data:
                raise InputError(f"{other}: no {key!r} in it")
            return (np.asarray(data[key], dtype=np.float32) * scale)[None]
    return None


def read_htc2022(path: str) -> MeasuredScan:
    """An HTC2022 `.mat` scan (struct `CtDataFull` or `CtDataLimited`: `sinogram` (views x 560) of
    -log line integrals and `parameters`), on the organisers' image grid (512 x 512 pixels of
    `effectivePixelSizePost` mm), with their full-data FBP (converted from 1/pixel to 1/mm) and
    segmentation when `<name>_recon_fbp.mat` and `<name>_recon_fbp_seg.mat` lie beside it.

    The organisers' angles run the other way round from this bundle's, from the opposite side, and
    their detector axis is reversed: angle + 180 degrees and the detector columns reversed give
    their reconstruction to a correlation of 0.99998 (tests/data/test_ctraw.py)."""
    data = _load_mat(path)
    structs = [v for k, v in data.items() if not k.startswith("__") and hasattr(v, "sinogram")]
    if not structs:
        raise InputError(f"{path}: no HTC2022 struct (CtDataFull or CtDataLimited with a sinogram) in it")
    ct = structs[0]
    p = getattr(ct, "parameters", None)
    needed = ("distanceSourceOrigin", "distanceSourceDetector", "angles", "pixelSizePost", "effectivePixelSizePost")
    if p is None or any(not hasattr(p, k) for k in needed):
        raise InputError(f"{path}: its parameters lack {', '.join(k for k in needed if p is None or not hasattr(p, k))}")
    sino = np.atleast_2d(np.asarray(ct.sinogram))
    sino = _check_sinogram_values(path, sino)[:, ::-1]
    angles = np.atleast_1d(np.asarray(p.angles, dtype=np.float64))
    if len(angles) != sino.shape[0]:
        raise InputError(f"{path}: {len(angles)} angles but the sinogram has {sino.shape[0]} views")
    pixel = float(p.effectivePixelSizePost)
    try:
        geom = FanBeamGeometry((512, 512), (pixel, pixel), tuple(angles + 180.0), sino.shape[1],
                               float(p.pixelSizePost), float(p.distanceSourceOrigin), float(p.distanceSourceDetector))
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    reference = _htc_companion(path, "_recon_fbp.mat", "reconFullFbp", 1.0 / pixel)
    seg = _htc_companion(path, "_recon_fbp_seg.mat", "reconFullFbpSeg", 1.0)
    return MeasuredScan(path, np.ascontiguousarray(sino)[None], geom, "htc2022", reference,
                        None if seg is None else seg.astype(np.uint8))


def estimate_rotation_centre(sinogram: np.ndarray, theta_deg: np.ndarray) -> float | None:
    """The detector position (fractional bin) of the rotation axis in a parallel-beam scan. Each
    view's centre of mass traces c + a cos(theta) + b sin(theta) (the first Helgason-Ludwig
    consistency condition), so a least-squares fit over the views gives the axis c; any set of at
    least three distinct angles works, no opposite pairs needed. The object must stay inside the
    detector. (slices, views, detectors) or (views, detectors); None when the mass is zero or the
    angles cannot separate c."""
    sino = sinogram if sinogram.ndim == 3 else sinogram[None]
    p = np.clip(sino.astype(np.float64), 0, None)
    mass = p.sum(-1)  # (S, V)
    if not (mass > 0).all():
        return None
    k = np.arange(sino.shape[-1], dtype=np.float64)
    centroid = (p * k).sum(-1) / mass
    th = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    design = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], 1)
    if np.linalg.matrix_rank(design) < 3:
        return None
    coef = np.linalg.lstsq(np.tile(design, (sino.shape[0], 1)), centroid.reshape(-1), rcond=None)[0]
    return float(coef[0])


def read_dxchange(path: str) -> MeasuredScan:
    """APS Data Exchange HDF5: raw counts `exchange/data` (projections, rows, columns), flats
    `data_white`, darks `data_dark`, angles `theta` (degrees). Each detector row is a slice of a
    parallel-beam scan: normalised by the mean flat and dark, -log, and reconstructed on a
    columns x columns grid about the rotation axis fitted from the views' centres of mass
    (`estimate_rotation_centre`). The pixel size is `measurement/instrument/detector/pixel_size`
    (mm) if the file has it, else 1: attenuation per detector pixel."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot be read as HDF5 ({e})") from None
    with f:
        ex = f.get("exchange")
        if ex is None or "data" not in ex:
            raise InputError(f"{path}: no exchange/data in it (not APS Data Exchange)")
        missing = [k for k in ("data_white", "data_dark", "theta") if k not in ex]
        if missing:
            raise InputError(f"{path}: exchange/ lacks {', '.join(missing)}")
        data = np.asarray(ex["data"], dtype=np.float64)
        white = np.asarray(ex["data_white"], dtype=np.float64)
        dark = np.asarray(ex["data_dark"], dtype=np.float64)
        theta = np.asarray(ex["theta"], dtype=np.float64).reshape(-1)
        pixel = 1.0
        for key in ("measurement/instrument/detector/pixel_size", "measurement/instrument/detector/x_pixel_size"):
            if key in f:
                pixel = float(np.asarray(f[key]).reshape(-1)[0])
                break
    if data.ndim != 3:
        raise InputError(f"{path}: exchange/data must be (projections, rows, columns), got shape {data.shape}")
    if white.ndim == 2:
        white = white[None]
    if dark.ndim == 2:
        dark = dark[None]
    for name, arr in (("data", data), ("data_white", white), ("data_dark", dark), ("theta", theta)):
        if not np.isfinite(arr).all():
            raise InputError(f"{path}: exchange/{name} contains NaN or infinite values")
    for name, arr in (("data", data), ("data_white", white), ("data_dark", dark)):
        if (arr < 0).any():
            raise InputError(f"{path}: exchange/{name} has negative counts ({int((arr < 0).sum())} values)")
    if white.shape[1:] != data.shape[1:] or dark.shape[1:] != data.shape[1:]:
        raise InputError(f"{path}: flats {white.shape} and darks {dark.shape} do not match the projections "
                         f"{data.shape}")
    if len(theta) != data.shape[0]:
        raise InputError(f"{path}: {len(theta)} angles in exchange/theta but {data.shape[0]} projections")
    if not pixel > 0 or not math.isfinite(pixel):
        raise InputError(f"{path}: detector pixel size must be positive, got {pixel}")
    flat, dark_mean = white.mean(0), dark.mean(0)
    bad = flat <= dark_mean
    if bad.any():
        raise InputError(f"{path}: the flat field is darker than (or equal to) the dark field at {int(bad.sum())} "
                         "detector pixels")
    # transmission, floored at half a count above the dark level (a ray with no counts left)
    transmission = (data - dark_mean) / (flat - dark_mean)
    transmission = np.maximum(transmission, 0.5 / (flat - dark_mean))
    sino = np.ascontiguousarray(np.transpose(-np.log(transmission), (1, 0, 2)), dtype=np.float32)
    n_det = sino.shape[-1]
    centre = estimate_rotation_centre(sino, theta)
    note = f"rotation centre {centre:.2f} px (estimated)" if centre is not None else "rotation centre: detector centre"
    centre = (n_det - 1) / 2 if centre is None else centre
    try:
        geom = ParallelBeamGeometry((n_det, n_det), (pixel, pixel), n_views=len(theta), n_detectors=n_det,
                                    detector_spacing=pixel, angles_deg=tuple(theta),
                                    detector_offset=-(centre - (n_det - 1) / 2) * pixel)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    check_memory(path, geom)
    return MeasuredScan(path, sino, geom, "dxchange", notes=note)


def read_measured_ct(path: str) -> MeasuredScan:
    """Any measured CT input: `<name>_sinogram.npy`, HTC2022 `.mat` or Data Exchange `.h5`."""
    if is_sinogram_file(path):
        return read_sinogram_npy(path)
    if is_htc_file(path):
        return read_htc2022(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    return read_dxchange(path)


def measured_ct_kind(path: str) -> bool:
    """Whether `path` is a measured CT input (by name, or by content for HDF5)."""
    p = str(path)
    if is_htc_file(p):
        return True
    if is_sinogram_file(p):
        base = p[: -len(SINOGRAM_SUFFIX)]
        return not (os.path.exists(base + ".nii.gz") or os.path.exists(base + ".nii"))  # a volume's given scan
    if p.endswith((".h5", ".hdf5")) and os.path.isfile(p):
        return is_dxchange(p)
    return False


def choose_views(angles_deg, views: int | None = None, arc_deg: float = 360.0, start_deg: float = 0.0) -> list[int]:
    """Indices of a sparse or limited-angle subset of a scan's views: the distinct angles (a view
    repeating another modulo 360 degrees is left out) within [start, start + arc] degrees (the whole
    circle when arc >= 360), then `views` of them evenly spaced (None: all). 60 views over 360
    degrees of HTC2022's 0:0.5:360 are every 12th; its limited-angle 90 degrees is 181 views."""
    a = np.mod(np.asarray(angles_deg, dtype=np.float64), 360.0)
    seen: dict[float, int] = {}
    for i, v in enumerate(np.round(a, 6)):
        seen.setdefault(float(v) % 360.0, i)
    rel = sorted(((ang - start_deg) % 360.0, i) for ang, i in seen.items())  # (angle from the start, index)
    idx = [i for r, i in rel if arc_deg >= 360 or r <= arc_deg + 1e-6]
    if not idx:
        raise InputError(f"no views within {arc_deg:g} degrees from {start_deg:g}")
    if views is None or views >= len(idx):
        if views is not None and views > len(idx):
            raise InputError(f"{views} views requested but the scan has {len(idx)} in that arc")
        return idx
    if views < 1:
        raise InputError(f"views must be at least 1, got {views}")
    if arc_deg >= 360:
        pick = np.floor(np.arange(views) * len(idx) / views).astype(int)
    else:
        pick = np.round(np.linspace(0, len(idx) - 1, views)).astype(int)
    return [idx[int(k)] for k in pick]
