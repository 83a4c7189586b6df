"""Raw multi-coil Cartesian k-space from scanners and tools: fastMRI HDF5, ISMRMRD HDF5, Siemens
TWIX (.dat) and BART (.cfl/.hdr), read into one checked layout.

`RawKspace.kspace` is (slices, coils, H, W) complex64 on the whole acquired grid: H the readout
(frequency encoding), W the phase encoding (the axis a 1D mask undersamples). `mask` is None for
fully sampled data (it is then undersampled retrospectively, every coil with the same mask), or
the acquired (W,) lines / (H, W) samples. `crop` is the reconstruction size from the header
(fastMRI/ISMRMRD reconSpace, TWIX readout oversampling), when it has one.

Why these packages: `ismrmrd` reads ISMRMRD's HDF5 acquisitions (a compound type with flags and
encoding counters) as the standard defines them; `twixtools` parses Siemens' TWIX headers and
measurement blocks (VB and VD/VE, several raids); both are the field's own readers. fastMRI
files go through MONAI's `FastMRIReader` (`bundle.data.fastmri`). BART's format is two small
text and binary files, read here.

Every problem is one `InputError` naming the file: unreadable or truncated files, several
measurements or repetitions, non-Cartesian trajectories, NaN or infinite samples, all-zero
k-space, masks or maps that do not match the k-space.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from bundle.data.fastmri import ISMRMRD_NS
from bundle.errors import InputError

RAW_SUFFIXES = (".h5", ".hdf5", ".dat", ".cfl", ".hdr")


@dataclass
class RawKspace:
    path: str
    format: str  # "fastmri", "ismrmrd", "twix" or "bart"
    kspace: np.ndarray  # (S, C, H, W) complex64
    mask: np.ndarray | None  # None: fully sampled; (W,) or (H, W) bool
    crop: tuple[int, int] | None  # reconstruction size (h, w) from the header
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm: (H, W, slice)
    maps: np.ndarray | None = None  # (S, C, H, W) complex sensitivities given with the data

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def prospective(self) -> bool:
        return self.mask is not None


def _centred_ifft(x: np.ndarray, axis: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)


def infer_mask(path: str, kspace: np.ndarray) -> np.ndarray | None:
    """The acquired samples of k-space that is zero where it was not acquired: None when every
    sample is present, or when the acquired lines are one contiguous block (zero-padded edges of a
    fully sampled scan); a (W,) line mask when every row is acquired alike; else (H, W)."""
    sampled = np.abs(kspace).reshape(-1, *kspace.shape[-2:]).max(0) > 0  # (H, W): any slice or coil
    if sampled.all():
        return None
    if not sampled.any():
        raise InputError(f"{path}: the k-space is all zeros")
    if (sampled == sampled[:1]).all():
        lines = np.flatnonzero(sampled[0])
        if lines[-1] - lines[0] + 1 == lines.size:
            return None  # one contiguous block: zero padding of the edges (partial Fourier, fastMRI), not undersampling
        return sampled[0].copy()
    return sampled


def check_raw(raw: RawKspace) -> RawKspace:
    """The checks every format shares (one `InputError` naming the file); k-space as complex64."""
    raw.kspace = np.ascontiguousarray(raw.kspace, dtype=np.complex64)
    k = raw.kspace
    if k.ndim != 4 or min(k.shape) < 1:
        raise InputError(f"{raw.path}: k-space must be (slices, coils, H, W), got shape {k.shape}")
    if not np.isfinite(k).all():
        raise InputError(f"{raw.path}: the k-space has NaN or infinite samples")
    if not np.abs(k).max() > 0:
        raise InputError(f"{raw.path}: the k-space is all zeros")
    h, w = k.shape[-2:]
    if min(h, w) < 16:
        raise InputError(f"{raw.path}: a {h} x {w} k-space grid is too small to reconstruct (at least 16 x 16)")
    if raw.mask is not None:
        m = np.asarray(raw.mask).astype(bool)
        if m.shape not in ((w,), (h, w)):
            raise InputError(f"{raw.path}: the mask has shape {m.shape} but the k-space is {h} x {w} "
                             f"(expected ({w},) or ({h}, {w}))")
        if not m.any():
            raise InputError(f"{raw.path}: the mask selects no k-space samples")
        raw.mask = m
    if raw.maps is not None:
        maps = raw.maps
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4 or maps.shape[1] != k.shape[1] or maps.shape[-2:] != k.shape[-2:] \
                or maps.shape[0] not in (1, k.shape[0]):
            raise InputError(f"{raw.path}: the sensitivity maps {tuple(raw.maps.shape)} do not match the k-space "
                             f"{k.shape} ({maps.shape[1] if maps.ndim == 4 else '?'} coils in the maps, {k.shape[1]} in the k-space)")
        if not np.isfinite(maps).all():
            raise InputError(f"{raw.path}: the sensitivity maps have NaN or infinite values")
        raw.maps = maps.astype(np.complex64)
    if raw.crop is not None:
        raw.crop = (min(int(raw.crop[0]), h), min(int(raw.crop[1]), w))
    return raw


# ---- fastMRI ----
def read_fastmri_raw(path: str) -> RawKspace:
    """A fastMRI HDF5 file (`bundle.data.fastmri.read_fastmri` checks it). The crop is the
    header's reconSpace only (a stored `reconstruction_rss` does not crop the multi-coil output);
    a `sensitivity_maps` dataset (slices, coils, H, W), if present, is read and checked; a file
    without a `mask` whose k-space is zero on some lines is taken as undersampled there."""
    import h5py

    from bundle.data.fastmri import _header_geometry, read_fastmri

    f = read_fastmri(path)
    maps = None
    with h5py.File(path, "r") as h:
        crop, _ = _header_geometry(h["ismrmrd_header"][()]) if "ismrmrd_header" in h else (None, None)
        if "sensitivity_maps" in h:
            maps = np.asarray(h["sensitivity_maps"])
    mask = f.mask if f.mask is not None else infer_mask(path, f.kspace)
    if mask is None and not np.abs(f.kspace).max() > 0:
        raise InputError(f"{path}: the k-space is all zeros")
    return check_raw(RawKspace(path, "fastmri", f.kspace, mask, crop, f.spacing, maps))


def is_ismrmrd(path: str) -> bool:
    """An HDF5 file with ISMRMRD's `dataset/data` acquisitions (fastMRI files have `kspace`)."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            return "dataset" in h and "data" in h["dataset"] and "kspace" not in h
    except Exception:
        return False


# ---- ISMRMRD ----
def _xml_int(root: ET.Element, path: str, default: int | None = None) -> int | None:
    node = root.find(path, dict(ISMRMRD_NS))
    return int(node.text) if node is not None and node.text is not None else default


def read_ismrmrd(path: str) -> RawKspace:
    """An ISMRMRD HDF5 file (group `dataset`): Cartesian acquisitions placed on the encoded grid by
    their encode step 1 (phase encoding, W) and slice (3D: encode step 2, inverse Fourier
    transformed into slices); noise, navigator, phase-correction and feedback scans are skipped;
    reversed readouts are flipped. The crop is reconSpace's matrix (readout oversampling)."""
    import h5py
    import ismrmrd

    try:
        with h5py.File(path, "r") as h:
            _ = h["dataset/data"].shape
        dset = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
        header = dset.read_xml_header()
        n = dset.number_of_acquisitions()
        acqs = [dset.read_acquisition(i) for i in range(n)]
        dset.close()
    except Exception as e:
        raise InputError(f"{path}: cannot be read as ISMRMRD HDF5 ({type(e).__name__}: {str(e)[:120]})") from None
    try:
        root = ET.fromstring(header.decode() if isinstance(header, bytes) else str(header))
    except ET.ParseError as e:
        raise InputError(f"{path}: the ISMRMRD XML header cannot be parsed ({e})") from None
    traj = root.find("m:encoding/m:trajectory", dict(ISMRMRD_NS))
    if traj is not None and traj.text is not None and traj.text.strip() != "cartesian":
        raise InputError(f"{path}: {traj.text.strip()} trajectory; only Cartesian k-space is supported")
    enc_y = _xml_int(root, "m:encoding/m:encodedSpace/m:matrixSize/m:y")
    enc_z = _xml_int(root, "m:encoding/m:encodedSpace/m:matrixSize/m:z", 1) or 1
    rec_x = _xml_int(root, "m:encoding/m:reconSpace/m:matrixSize/m:x")
    rec_y = _xml_int(root, "m:encoding/m:reconSpace/m:matrixSize/m:y")
    centre_y = _xml_int(root, "m:encoding/m:encodingLimits/m:kspace_encoding_step_1/m:center")
    skip = [ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
            ismrmrd.ACQ_IS_RTFEEDBACK_DATA, ismrmrd.ACQ_IS_HPFEEDBACK_DATA, ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
            ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA]
    lines = [a for a in acqs if not any(a.is_flag_set(f) for f in skip)]
    if not lines:
        raise InputError(f"{path}: no imaging acquisitions")
    if any(a.trajectory_dimensions > 0 for a in lines):
        raise InputError(f"{path}: acquisitions carry a trajectory (non-Cartesian); only Cartesian k-space is supported")
    for name in ("repetition", "contrast", "set", "phase"):
        values = {getattr(a.idx, name) for a in lines}
        if len(values) > 1:
            raise InputError(f"{path}: {len(values)} {name}s in one file; give one measurement per file")
    samples = {a.number_of_samples for a in lines}
    coils = {a.active_channels for a in lines}
    if len(samples) > 1 or len(coils) > 1:
        raise InputError(f"{path}: acquisitions differ in readout length {sorted(samples)} or coils {sorted(coils)}")
    h, c = samples.pop(), coils.pop()
    steps = [a.idx.kspace_encode_step_1 for a in lines]
    w = max(enc_y or 0, max(steps) + 1)
    offset = (w // 2 - centre_y) if centre_y is not None and enc_y is not None else 0
    slices = sorted({a.idx.slice for a in lines}) if enc_z == 1 else list(range(enc_z))
    k = np.zeros((len(slices), c, h, w), dtype=np.complex64)
    counts = np.zeros((len(slices), w), dtype=np.int32)
    for a in lines:
        s = slices.index(a.idx.slice) if enc_z == 1 else a.idx.kspace_encode_step_2
        y = a.idx.kspace_encode_step_1 + offset
        if not 0 <= y < w or not 0 <= s < len(slices):
            raise InputError(f"{path}: an acquisition lies outside the encoded matrix (line {y}, slice {s})")
        data = np.asarray(a.data, dtype=np.complex64)
        if a.is_flag_set(ismrmrd.ACQ_IS_REVERSE):
            data = data[:, ::-1]
        k[s, :, :, y] += data
        counts[s, y] += 1
    k = (k / np.maximum(counts, 1)[:, None, None, :]).astype(np.complex64)  # averages
    if enc_z > 1:
        k = _centred_ifft(k, 0).astype(np.complex64)
    crop = (rec_x, rec_y) if rec_x and rec_y else None
    mask = infer_mask(path, k)
    return check_raw(RawKspace(path, "ismrmrd", k, mask, crop))


# ---- Siemens TWIX ----
def read_twix(path: str) -> RawKspace:
    """A Siemens TWIX .dat file (VB, or VD/VE with several raids: the adjustment scans are
    skipped, exactly one measurement must hold image data). Cartesian only; slices (and 3D
    partitions, inverse Fourier transformed) become slices, averages are averaged; several
    repetitions, echoes, sets or phases are refused. The crop removes the readout oversampling
    (the header's base resolution)."""
    import twixtools

    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        meas = twixtools.read_twix(path, verbose=False)
        mapped = twixtools.map_twix(meas)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as Siemens TWIX ({type(e).__name__}: {str(e)[:120]})") from None
    images = [(m, mm) for m, mm in zip(meas, mapped) if "image" in mm and mm["image"].shape[-1] > 0]
    if not images:
        raise InputError(f"{path}: no image data in the TWIX file")
    if len(images) > 1:
        raise InputError(f"{path}: {len(images)} measurements with image data; give one measurement per file")
    m, mm = images[0]
    kspace_hdr = m["hdr"].get("MeasYaps", {}).get("sKSpace", {})
    trajectory = kspace_hdr.get("ucTrajectory", 1)
    if trajectory not in (1, None):
        raise InputError(f"{path}: non-Cartesian trajectory (ucTrajectory {trajectory}); only Cartesian k-space is supported")
    if "phasecorr" in mm:
        raise InputError(f"{path}: an echo-planar (EPI) acquisition with phase-correction scans: its ghost "
                         "correction is not supported; only Cartesian line-by-line acquisitions are")
    im = mm["image"]
    im.flags["remove_os"] = False
    im.flags["average"]["Ave"] = True
    dims = list(im.dims)
    try:
        data = np.asarray(im[:], dtype=np.complex64)
    except Exception as e:
        raise InputError(f"{path}: the TWIX image data cannot be read ({type(e).__name__}: {str(e)[:120]}); "
                         "the file may be truncated") from None
    shape = dict(zip(dims, data.shape))
    for name in ("Rep", "Eco", "Set", "Phs", "Seg", "Ida", "Idb", "Idc", "Idd", "Ide"):
        if shape.get(name, 1) > 1:
            raise InputError(f"{path}: {shape[name]} values of {name} (repetitions, echoes, sets, phases or "
                             "segments); give one measurement per file")
    names = ("Sli", "Par", "Cha", "Col", "Lin")
    order = [dims.index(d) for d in names]
    rest = [i for i in range(data.ndim) if i not in order]  # all of size 1 (checked, averages averaged)
    arr = data.transpose(rest + order).reshape([data.shape[i] for i in order])
    if arr.shape[1] > 1:  # 3D: partitions to slices
        arr = _centred_ifft(arr, 1)
    k = arr.reshape(-1, *arr.shape[2:]).astype(np.complex64)  # (Sli * Par, Cha, Col, Lin)
    base = kspace_hdr.get("lBaseResolution")
    crop = (int(base), k.shape[-1]) if base and k.shape[-2] > int(base) else None
    mask = infer_mask(path, k)
    return check_raw(RawKspace(path, "twix", k, mask, crop))


# ---- BART ----
def read_cfl(path: str) -> np.ndarray:
    """A BART .cfl/.hdr pair (either name) as a complex64 array in BART's dimension order."""
    base = path[:-4] if path.endswith((".cfl", ".hdr")) else path
    hdr, cfl = base + ".hdr", base + ".cfl"
    for p in (hdr, cfl):
        if not os.path.isfile(p):
            raise InputError(f"{p}: file not found (a BART file is a .hdr and a .cfl pair)")
    try:
        with open(hdr) as f:
            lines = [ln.strip() for ln in f]
        dims = [int(v) for v in lines[lines.index("# Dimensions") + 1].split()]
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InputError(f"{hdr}: not a BART header (no '# Dimensions' line of integers)") from None
    if not dims or min(dims) < 1:
        raise InputError(f"{hdr}: invalid dimensions {dims}")
    count = int(np.prod(dims))
    size = os.path.getsize(cfl)
    if size != count * 8:
        raise InputError(f"{cfl}: {size} bytes but the header's dimensions {dims} need {count * 8}; "
                         "the file is truncated or does not belong to this header")
    data = np.fromfile(cfl, dtype=np.complex64, count=count)
    return data.reshape(dims, order="F")


def write_cfl(base: str, array: np.ndarray) -> str:
    """Write `array` as BART's `<base>.hdr` and `<base>.cfl` (complex64, column-major), each atomically."""
    from bundle.data.io import atomic_output, write_text_atomic

    data = np.asarray(array, dtype=np.complex64)
    dims = list(data.shape) + [1] * max(0, 16 - data.ndim)
    with atomic_output(base + ".cfl", ".cfl") as tmp:
        data.reshape(-1, order="F").tofile(tmp)
    write_text_atomic(base + ".hdr", "# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    return base + ".cfl"


def read_bart(path: str) -> RawKspace:
    """BART k-space (dimensions READ, PHS1, PHS2, COIL, ...): a 2D slice when READ or PHS2 is 1
    (H, W = the other two, in order), else 3D (READ inverse Fourier transformed into slices, H, W
    = PHS1, PHS2). Other dimensions (maps, echoes, time) must be 1. A `<name>_maps.cfl` beside it
    (BART's ecalib output, READ, PHS1, PHS2, COIL) gives sensitivity maps."""
    base = path[:-4] if path.endswith((".cfl", ".hdr")) else path
    data = read_cfl(path)
    dims = list(data.shape) + [1] * max(0, 4 - data.ndim)
    if any(d > 1 for d in dims[4:]):
        raise InputError(f"{path}: BART dimensions {dims}: only READ, PHS1, PHS2 and COIL may exceed 1 "
                         "(one measurement, one set of maps)")
    data = data.reshape(dims[:4], order="A")
    spatial = dims[:3]

    def to_grid(x: np.ndarray, kspace: bool) -> np.ndarray:
        """(READ, PHS1, PHS2, COIL) -> (S, C, H, W): 2D when READ or PHS2 is 1, else 3D with
        READ (inverse Fourier transformed, for k-space) as the slices."""
        if spatial[0] == 1:
            return np.transpose(x[0], (2, 0, 1))[None]
        if spatial[2] == 1:
            return np.transpose(x[:, :, 0], (2, 0, 1))[None]
        return np.transpose(_centred_ifft(x, 0) if kspace else x, (0, 3, 1, 2))

    k = to_grid(data, True).astype(np.complex64)
    maps = None
    if os.path.isfile(base + "_maps.cfl") or os.path.isfile(base + "_maps.hdr"):
        m = read_cfl(base + "_maps")
        mdims = list(m.shape) + [1] * max(0, 5 - m.ndim)
        if mdims[:3] != spatial:
            raise InputError(f"{base}_maps.cfl: maps of {mdims[:3]} for k-space of {spatial}")
        m = m.reshape(mdims, order="A")[:, :, :, :, 0].reshape(mdims[:4], order="A")  # the first set of maps
        maps = to_grid(m, False).astype(np.complex64)
    mask = infer_mask(path, k)
    return check_raw(RawKspace(path, "bart", k, mask, None, maps=maps))


def raw_kind(path: str) -> str | None:
    """"fastmri", "ismrmrd", "twix", "bart" or None, from the name and (HDF5) the content."""
    p = str(path)
    if p.endswith((".cfl", ".hdr")):
        return "bart"
    if p.endswith(".dat"):
        return "twix"
    if p.endswith((".h5", ".hdf5")):
        return "ismrmrd" if is_ismrmrd(p) else "fastmri"
    return None


def read_raw(path: str) -> RawKspace:
    """Read and check raw k-space of any supported format (one-line `InputError`s)."""
    kind = raw_kind(path)
    if kind is None:
        raise InputError(f"{path}: not raw k-space (expected .h5 fastMRI/ISMRMRD, .dat TWIX or .cfl/.hdr BART)")
    if kind != "bart" and not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    reader = {"fastmri": read_fastmri_raw, "ismrmrd": read_ismrmrd, "twix": read_twix, "bart": read_bart}[kind]
    return reader(path)
