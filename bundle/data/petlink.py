"""PET list-mode in: Siemens PETLINK 32-bit list files (Biograph mMR) with their Interfile header,
binned to 2D sinograms.

Words are 32-bit little-endian. Bit 31 = 0: an event (bit 30: 1 prompt, 0 delayed; bits 0-29: the
span-1 bin address sinogram x views x bins + view x bins + tangential bin). Bit 31 = 1: a tag
(bits 29-31 = 0b100: elapsed time in ms in bits 0-28). The 2D sinogram here is the sum over all
sinograms (every ring pair): the axial projection of the field of view, which needs no knowledge
of the michelogram order and keeps every count of a short scan. Its bins are not arc-corrected
(the mMR's LORs join crystals on a ring): bin k from the centre lies at s = R sin(k pi / (2 N)),
N crystals per ring, R the ring radius plus the mean depth of interaction; `arc_correct`
interpolates them onto evenly spaced bins (STIR's mMR scanner entry: R = 328 + 7 mm, 504 crystals
of which every 9th a gap).

Written here: no required or field package reads PETLINK (STIR does, in C++; sigpy and pygrappa do
not); the format is short and documented in the header and in ../shared/data/README.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from bundle.errors import InputError

HEADER_SUFFIXES = (".l.hdr", ".l.hdr.STIR")  # STIR's test data names its headers .hdr.STIR
LIST_SUFFIX = ".l"
MMR_CRYSTALS_PER_RING = 504
MMR_DOI_MM = 7.0  # mean depth of interaction added to the ring radius (STIR's mMR entry)


def read_interfile(path: str) -> dict[str, str]:
    """An Interfile header as {key: value}, keys lower-case without the leading '!' / '%'."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
        text = raw.decode("latin-1")
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    if not text.lstrip().upper().startswith("!INTERFILE"):
        raise InputError(f"{path}: not an Interfile header (no '!INTERFILE' at the start)")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":=" not in line:
            continue
        key, _, value = line.partition(":=")
        out[key.strip().lstrip("!%").strip().lower()] = value.strip()
    return out


def _named_data(header_path: str) -> str | None:
    try:
        name = read_interfile(header_path).get("name of data file")
    except InputError:
        return None
    return os.path.join(os.path.dirname(header_path), os.path.basename(name)) if name else None


def header_of(path: str) -> str | None:
    """The Interfile header of a list file: `<name>.l.hdr`, or a header beside it naming it."""
    p = str(path)
    if p.endswith(HEADER_SUFFIXES):
        return p
    for suffix in (".hdr", ".hdr.STIR"):
        if os.path.isfile(p + suffix):
            return p + suffix
    folder = os.path.dirname(os.path.abspath(p))
    for name in sorted(os.listdir(folder)):
        h = os.path.join(folder, name)
        if name.endswith(HEADER_SUFFIXES) and _named_data(h) == os.path.join(folder, os.path.basename(p)):
            return h
    return None


def is_listmode_file(path: str) -> bool:
    """A list-mode input by name: an Interfile header `<name>.l.hdr` (or `.l.hdr.STIR`), or a
    `<name>.l` that no header beside it describes (reading it then says what is missing)."""
    p = str(path)
    if not os.path.isfile(p):
        return False
    if p.endswith(HEADER_SUFFIXES):
        return True
    return p.endswith(LIST_SUFFIX) and header_of(p) is None


@dataclass
class ListModeScan:
    """A list-mode file binned to 2D: `prompts` and `delayed` (views, bins) counts summed over the
    sinograms, raw (not arc-corrected) bins; the scanner's numbers; `duration_s` from the time tags."""

    path: str
    prompts: np.ndarray
    delayed: np.ndarray
    bins: int
    views: int
    sinograms: int
    bin_mm: float
    radius_mm: float
    crystals: int
    duration_s: float
    notes: str = ""


def _int(header: dict, key: str, path: str) -> int:
    try:
        return int(float(header[key]))
    except (KeyError, ValueError):
        raise InputError(f"{path}: header key '{key}' missing or not a number") from None


def _span1_sinograms(rings: int, max_ring_difference: int) -> int:
    return sum(rings - abs(d) for d in range(-max_ring_difference, max_ring_difference + 1))


def read_petlink(path: str, chunk_words: int = 1 << 22) -> ListModeScan:
    """Read and bin a PETLINK list-mode file given by its header (`<name>.l.hdr`) or list file."""
    p = str(path)
    header_path = header_of(p)
    if header_path is None:
        raise InputError(f"{p}: list-mode file of an unknown format (no Interfile header <name>.l.hdr beside it)")
    h = read_interfile(header_path)
    space = h.get("sms-mi header name space", "")
    if "petlink" not in space.lower() or h.get("lm event and tag words format (bits)", "") != "32":
        raise InputError(f"{header_path}: list-mode format not supported (header name space {space or 'missing'!r}; "
                         "expected PETLINK 32-bit)")
    if h.get("axial compression", "1") != "1":
        raise InputError(f"{header_path}: axial compression {h['axial compression']}; span-1 list files only")
    data_name = h.get("name of data file", "")
    data_path = os.path.join(os.path.dirname(header_path), os.path.basename(data_name))
    if not data_name or not os.path.isfile(data_path):
        raise InputError(f"{header_path}: its data file {data_name or '(not named)'} is missing")
    bins = _int(h, "number of projections", header_path)
    views = _int(h, "number of views", header_path)
    rings = _int(h, "number of rings", header_path)
    mrd = _int(h, "maximum ring difference", header_path)
    if not (bins > 0 and views > 0 and rings > 0 and 0 <= mrd < rings):
        raise InputError(f"{header_path}: bins {bins}, views {views}, rings {rings}, ring difference {mrd} do not describe a scanner")
    sinograms = _span1_sinograms(rings, mrd)
    try:
        bin_mm = 10.0 * float(h["bin size (cm)"])
        radius_mm = 10.0 * float(h["gantry crystal radius (cm)"])
    except (KeyError, ValueError):
        raise InputError(f"{header_path}: 'bin size (cm)' or 'gantry crystal radius (cm)' missing") from None
    size = os.path.getsize(data_path)
    offset = _int(h, "data offset in bytes", header_path) if "data offset in bytes" in h else 0
    if size <= offset or (size - offset) % 4:
        raise InputError(f"{data_path}: {size} bytes is not a whole number of 32-bit list-mode words")
    n_addr = sinograms * views * bins
    prompts = np.zeros(views * bins, np.int64)
    delayed = np.zeros(views * bins, np.int64)
    times: list[int] = []
    words = np.memmap(data_path, dtype="<u4", mode="r", offset=offset)
    for start in range(0, len(words), chunk_words):
        w = np.asarray(words[start:start + chunk_words])
        event = (w >> 31) == 0
        addr = (w & 0x3FFFFFFF).astype(np.int64)
        if bool((addr[event] >= n_addr).any()):
            raise InputError(f"{data_path}: event addresses beyond the {n_addr} span-1 bins of the header: "
                             "not a PETLINK span-1 file of this scanner")
        plane = addr % (views * bins)  # view * bins + bin, summed over the sinograms
        prompt = event & (((w >> 30) & 1) == 1)
        prompts += np.bincount(plane[prompt], minlength=views * bins)
        delayed += np.bincount(plane[event & ~prompt], minlength=views * bins)
        tag = ~event & ((w >> 29) == 0b100)
        if tag.any():
            t = (w[tag] & 0x1FFFFFFF).astype(np.int64)
            times += [int(t[0]), int(t[-1])]
    duration = (max(times) - min(times) + 1) / 1000.0 if times else float("nan")
    crystals = MMR_CRYSTALS_PER_RING if 2 * views == MMR_CRYSTALS_PER_RING else 2 * views
    return ListModeScan(path=header_path, prompts=prompts.reshape(views, bins), delayed=delayed.reshape(views, bins),
                        bins=bins, views=views, sinograms=sinograms, bin_mm=bin_mm, radius_mm=radius_mm + MMR_DOI_MM,
                        crystals=crystals, duration_s=duration,
                        notes=f"{int(prompts.sum())} prompts, {int(delayed.sum())} delayed in {duration:.2f} s")


def raw_bin_positions(scan: ListModeScan) -> np.ndarray:
    """Tangential position (mm) of each raw bin: s = R sin(k pi / crystals), k from the centre bin."""
    k = np.arange(scan.bins) - scan.bins // 2
    return scan.radius_mm * np.sin(k * math.pi / scan.crystals)


def arc_correct(sinogram: np.ndarray, scan: ListModeScan, bins: int, spacing_mm: float) -> np.ndarray:
    """(views, raw bins) -> (views, `bins`) evenly spaced by `spacing_mm` about the centre, by
    linear interpolation in s (counts per mm kept: each value is scaled by the ratio of the bin
    widths); bins beyond the measured ones are 0."""
    s_raw = raw_bin_positions(scan)
    width = np.gradient(s_raw)
    s_new = (np.arange(bins) - (bins - 1) / 2.0) * spacing_mm
    out = np.stack([np.interp(s_new, s_raw, row / width, left=0.0, right=0.0) for row in sinogram.astype(np.float64)])
    return out * spacing_mm


def gap_mask(scan: ListModeScan) -> np.ndarray:
    """(views, bins) True for the LORs that touch a gap (the mMR's every 9th of its 504 crystals,
    its blocks being 8 crystals and a gap): with STIR's crystal numbering, crystal c is a gap when
    c % 9 == 0. Checked on the real file: those 21 % of the bins hold none of its 218,881 prompts
    (tests/data/test_petlink.py). Other scanners: no gaps."""
    if scan.crystals != MMR_CRYSTALS_PER_RING:
        return np.zeros((scan.views, scan.bins), bool)
    n = scan.crystals
    v = np.arange(scan.views)[:, None]
    t = np.arange(scan.bins)[None, :] - scan.bins // 2
    d1 = (v + (t >> 1) + n) % n  # the crystal pair of (view, tangential bin), as STIR numbers them
    d2 = (v - ((t + 1) >> 1) + n // 2 + n) % n
    return (d1 % 9 == 0) | (d2 % 9 == 0)


def fill_gaps(sinogram: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Each view's gap bins linearly interpolated from its measured bins (gap filling)."""
    out = sinogram.astype(np.float64).copy()
    k = np.arange(sinogram.shape[1])
    for v in range(sinogram.shape[0]):
        good = ~gaps[v]
        if good.any() and gaps[v].any():
            out[v, gaps[v]] = np.interp(k[gaps[v]], k[good], out[v, good])
    return out


def listmode_sinograms(scan: ListModeScan, bins: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The 2D prompts sinogram (gaps filled, arc-corrected to `bins` of `spacing_mm`) and a flat
    randoms estimate holding the delayed events' total (a 0.6 s scan has ~0.4 delayed events per
    bin: too few to use bin by bin)."""
    gaps = gap_mask(scan)
    prompts = arc_correct(fill_gaps(scan.prompts, gaps), scan, bins, spacing_mm)
    measured = arc_correct(np.ones(scan.prompts.shape), scan, bins, spacing_mm) > 0
    delayed_total = float(fill_gaps(scan.delayed, gaps).sum())
    randoms = np.where(measured, delayed_total / max(int(measured.sum()), 1), 0.0)
    return prompts, randoms
