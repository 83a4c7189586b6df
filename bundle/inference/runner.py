"""The inference runner: every input of a folder (or list) loaded and checked before anything is
written, reoriented to RAS, reconstructed by a modality's reconstructor, and written back in the
input's geometry, atomically.

A reconstructor is a small object per modality that holds no state between volumes:

- `outputs`: the names of its outputs (`<name>_<output>.nii.gz`), e.g. ("recon", "fbp");
- `dicom_outputs`: those also written as a derived DICOM series for DICOM inputs;
- `accepts_prospective`: whether it takes undersampled k-space (fastMRI files with a mask);
- `check(path, volume, spacing) -> dict`: checks an input (RAS volume, spacing in mm) and returns
  the extra inputs it needs (e.g. a measured sinogram beside the file), or raises `InputError`;
- `reconstruct(volume, spacing, name, **extra) -> {output: array}`: RAS volume in, RAS arrays out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from tqdm import tqdm

from bundle.data.ctraw import measured_ct_kind, read_measured_ct
from bundle.data.dicom import write_dicom_series
from bundle.data.io import TMP_PREFIX, nifti_array, nifti_like, remove_leftovers, tmp_path_beside
from bundle.data.rawkspace import is_ismrmrd, read_raw
from bundle.data.readers import InputVolume, input_kind, list_inputs, load_input, output_stem
from bundle.errors import InputError

logger = logging.getLogger(__name__)


def resolve_inputs(input_dir: str, datalist: str | None = None, key: str = "test") -> list[str]:
    """The inputs to reconstruct: every input in `input_dir`, or the `key` list of a MONAI
    datalist whose paths are relative to `input_dir`."""
    if datalist is None:
        return list_inputs(input_dir)
    from bundle.data.datalists import load_datalist

    return [item["image"] for item in load_datalist(datalist, input_dir, key)]


def ras_spacing(img: nib.Nifti1Image, to_ras: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) of `img` along the axes of its RAS-reoriented array."""
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    out = [1.0, 1.0, 1.0]
    for i, (axis, _) in enumerate(to_ras):
        out[int(axis)] = zooms[i]
    return (out[0], out[1], out[2])


class Reconstructor:
    """The defaults of the reconstructor interface (module docstring): one "recon" output, also
    written as DICOM for DICOM inputs; fully sampled inputs only; no checks or extra inputs.
    Subclasses add `reconstruct(volume, spacing, name, **extra)` with the extra inputs they take."""

    outputs: tuple[str, ...] = ("recon",)
    dicom_outputs: tuple[str, ...] = ("recon",)
    accepts_prospective = False

    def check(self, path: str, volume: np.ndarray, spacing: Sequence[float]) -> dict:
        return {}


@dataclass
class _Prepared:
    """An input loaded and checked, ready to reconstruct: its RAS volume and spacing, the
    orientation back to the input's, and the reconstructor's extra inputs."""

    item: InputVolume | None
    stem: str
    volume: np.ndarray | None
    spacing: tuple[float, float, float]
    from_ras: np.ndarray | None
    extra: dict = field(default_factory=dict)
    raw_path: str | None = None  # multi-coil raw k-space, for the multi-coil reconstructor (read again
                                 # when its turn comes: a folder of raw scans is not held in memory)


class InferenceRunner:
    """Reconstruct every input (a folder, or a list of NIfTI files, DICOM series folders and
    fastMRI HDF5 files) into `output_dir` with `reconstructor`.

    Args:
        reconstructor: the modality's reconstructor (see the module docstring).
        output_dicom: DICOM inputs also get `<name>_<output>_dicom/`, a derived series
            referencing the source, for each of the reconstructor's `dicom_outputs`.
        series_uid: the series to read from DICOM folders that hold several.
        progress: a progress bar over the volumes.
        overwrite: replace the outputs of an earlier run (named in a warning); without it, a
            folder holding any output this run would write is refused before anything is written.
    """

    def __init__(self, reconstructor, output_dicom: bool = False, series_uid: str | None = None,
                 progress: bool = True, multicoil=None, measured=None, overwrite: bool = False) -> None:
        self.reconstructor = reconstructor
        self.overwrite = bool(overwrite)
        self.measured = measured
        self.output_dicom = bool(output_dicom)
        self.series_uid = series_uid
        self.progress = progress
        self.multicoil = multicoil

    def _multicoil_for(self, path: str):
        """The multi-coil reconstructor for raw k-space at `path`, and the file read; (None, None)
        for inputs that are not raw multi-coil k-space (single-coil fastMRI files go the MRI way)."""
        from bundle.inference.multicoil import MultiCoilReconstructor

        kind = input_kind(path)
        forced = isinstance(self.reconstructor, MultiCoilReconstructor)
        if kind not in ("fastmri", "raw"):
            if forced:
                raise InputError(f"{path}: not raw k-space; the multi-coil model reads fastMRI or ISMRMRD .h5, "
                                 "TWIX .dat and BART .cfl files")
            return None, None
        if kind == "fastmri" and self.multicoil is None and not is_ismrmrd(path):
            return None, None  # no multi-coil model configured: the single-coil emulation (RSS image)
        raw = read_raw(path)
        if forced:
            return self.reconstructor, raw
        if raw.coils == 1 and raw.format == "fastmri":
            return None, None
        if self.multicoil is None:
            raise InputError(f"{path}: raw multi-coil k-space ({raw.coils} coils); use configs/inference.yaml, "
                             "which holds the multi-coil model")
        return self.multicoil, raw

    def prepare(self, path: str) -> _Prepared:
        """Load and check one input; nothing is written."""
        if input_kind(path) == "listmode":
            if not hasattr(self.reconstructor, "read_scan"):
                raise InputError(f"{path}: PET list-mode; use configs/inference_pet.yaml")
            scan = self.reconstructor.read_scan(path)
            self.reconstructor.load()  # its weights, checked before anything is written
            p = self.reconstructor.listmode_pixel_mm
            return _Prepared(None, output_stem(path), None, (p, p, p), None,
                             {"scan": scan, "scan_reconstructor": self.reconstructor})
        if measured_ct_kind(path):
            if self.measured is None:
                raise InputError(f"{path}: measured CT projections; use configs/inference_ct.yaml, which holds the "
                                 "measured-CT model")
            scan = read_measured_ct(path)
            if getattr(self.measured, "method", "network") == "network":
                self.measured.load()  # its weights, checked before anything is written
            sy, sx = scan.geometry.pixel_spacing
            return _Prepared(None, output_stem(path), None, (sy, sx, 1.0), None, {"scan": scan})
        multi, raw = self._multicoil_for(path)
        if multi is not None:
            stem = output_stem(path)
            extra = multi.check(raw, stem)
            extra["reconstructor"] = multi
            return _Prepared(None, stem, None, raw.spacing, None, extra, raw.path)
        rec = self.reconstructor
        item = load_input(path, self.series_uid)
        if item.prospective and not rec.accepts_prospective:
            raise InputError(f"{item.path}: undersampled MRI k-space is not an input of this reconstructor "
                             f"(outputs {', '.join(rec.outputs)}); use configs/inference.yaml")
        to_ras = io_orientation(item.reference.affine)
        from_ras = ornt_transform(axcodes2ornt(("R", "A", "S")), to_ras)
        spacing = ras_spacing(item.reference, to_ras)
        volume = apply_orientation(item.data, to_ras)  # a view: no copy
        extra = rec.check(item.path, volume, spacing)
        if item.prospective:  # fastMRI volumes are (h, w, slices) with a diagonal affine: already RAS
            extra["kspace_grid"] = item.kspace_grid
        return _Prepared(item, output_stem(path), volume, spacing, from_ras, extra)

    def _output_names(self, p: _Prepared) -> list[str]:
        """The file and folder names `p` will write in the output folder."""
        if p.raw_path is not None:
            names = list(p.extra["reconstructor"].outputs)
        elif "scan" in p.extra:
            names = list(p.extra.get("scan_reconstructor", self.measured).outputs)
        else:
            names = list(self.reconstructor.outputs)
        out = [f"{p.stem}_{name}.nii.gz" for name in names]
        if self.output_dicom and p.item is not None and p.item.series is not None:
            out += [f"{p.stem}_{name}_dicom" for name in self.reconstructor.dicom_outputs]
        return out

    @staticmethod
    def _bytes_needed(p: _Prepared, n_outputs: int) -> int:
        """An upper bound of what `p` writes: float32 (uncompressed) per output, or the raw file's size."""
        if p.volume is not None:
            return int(p.volume.size) * 4 * n_outputs + 2**16
        path = p.raw_path or getattr(p.extra.get("scan"), "path", None)
        return (os.path.getsize(path) if path and os.path.isfile(path) else 2**24) * max(1, n_outputs)

    def run(self, inputs: Sequence[str] | str, output_dir: str) -> list[str]:
        """Every input is loaded and checked, and the output folder too, before anything is
        written. Returns the written paths."""
        files = list_inputs(inputs) if isinstance(inputs, str) else list(inputs)
        if not files:
            raise InputError("no input volumes given")
        stems: dict[str, str] = {}
        for f in files:
            other = stems.setdefault(output_stem(f), f)
            if other != f:
                raise InputError(f"{f}: has the same name as {other}; their outputs would overwrite each other")
        prepared = [self.prepare(f) for f in files]  # all errors before any output
        names = [*self.reconstructor.outputs, *(self.multicoil.outputs if self.multicoil is not None else ()),
                 *(self.measured.outputs if self.measured is not None else ())]
        suffixes = tuple(f"_{name}" for name in names)
        out_abs = os.path.abspath(output_dir)
        for f in files:
            if os.path.dirname(os.path.abspath(f)) == out_abs and output_stem(f).endswith(suffixes):
                raise InputError(f"{f}: looks like an output of this bundle; use another input_dir")
        planned = {p.stem: self._output_names(p) for p in prepared}
        present = {stem: [n for n in names if os.path.lexists(os.path.join(output_dir, n))]
                   for stem, names in planned.items()}
        # an incomplete set (an interrupted run): redone without asking; a complete one is a result
        incomplete = sorted(n for stem, ns in present.items() if 0 < len(ns) < len(planned[stem]) for n in ns)
        existing = sorted(n for stem, ns in present.items() if len(ns) == len(planned[stem]) for n in ns)
        if existing and not self.overwrite:
            shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise InputError(f"output_dir {output_dir}: holds earlier results that this run would replace ({shown}); "
                             "use --overwrite true to replace them, or another output_dir")
        needed = sum(self._bytes_needed(p, len(planned[p.stem])) for p in prepared)
        check_output_dir(output_dir, needed)
        remove_leftovers(output_dir, logger)
        if existing:
            logger.warning("replacing %d earlier output(s) in %s: %s", len(existing), output_dir, ", ".join(existing))
        if incomplete:
            logger.warning("redoing the incomplete output sets of an interrupted run in %s (%s)", output_dir,
                           ", ".join(incomplete))
        written: list[str] = []
        for p in tqdm(prepared, desc="reconstructing", unit="vol", disable=not self.progress):
            try:
                written += self._write_one(p, output_dir)
            except OSError as e:  # e.g. the disk filled up while writing: one line, the earlier outputs kept
                raise InputError(f"output_dir {output_dir}: writing the outputs of {p.stem} failed "
                                 f"({e.strerror or e}); {len(written)} file(s) of earlier volumes were written") from None
        return written

    def _write_one(self, p: _Prepared, output_dir: str) -> list[str]:
        if p.raw_path is not None:
            return self._write_raw(p, output_dir)
        if "scan" in p.extra:
            return self._write_measured(p, output_dir)
        assert p.item is not None and p.from_ras is not None
        result = self.reconstructor.reconstruct(p.volume, p.spacing, p.stem, **p.extra)
        result = {key: apply_orientation(value, p.from_ras) for key, value in result.items()}
        written = write_set(result, p.stem, output_dir, p.item.reference, p.item.path)
        if self.output_dicom and p.item.series is not None:
            for key in self.reconstructor.dicom_outputs:
                out = os.path.join(output_dir, f"{p.stem}_{key}_dicom")
                written += write_dicom_series(result[key], p.item.series, out, overwrite=True,  # checked in run()
                                              description=f"{key} (deep-learning reconstruction bundle)")
        logger.info("%s -> %s_{%s}.nii.gz", p.item.path, os.path.join(output_dir, p.stem), ",".join(result))
        return written

    @staticmethod
    def _write_raw(p: _Prepared, output_dir: str) -> list[str]:
        """Reconstruct multi-coil raw k-space and write its outputs in the axes of the k-space
        (no patient geometry in raw data: a diagonal affine with the header's voxel size)."""
        extra = dict(p.extra)
        rec = extra.pop("reconstructor")
        assert p.raw_path is not None
        raw = read_raw(p.raw_path)  # checked in `prepare`
        result = rec.reconstruct_raw(raw, p.stem, **extra)
        affine = np.diag([*p.spacing, 1.0])
        written = write_set(result, p.stem, output_dir, affine, raw.path)
        logger.info("%s -> %s_{%s}.nii.gz", raw.path, os.path.join(output_dir, p.stem), ",".join(result))
        return written


    def _write_measured(self, p: _Prepared, output_dir: str) -> list[str]:
        """Reconstruct a measured scan (CT projections, PET list-mode) and write its outputs on the
        scan's own grid."""
        scan = p.extra["scan"]
        rec = p.extra.get("scan_reconstructor", self.measured)
        result = rec.reconstruct_scan(scan, p.stem)
        affine = rec.affine(scan)
        written = write_set(result, p.stem, output_dir, affine, scan.path)
        logger.info("%s -> %s_{%s}.nii.gz%s", scan.path, os.path.join(output_dir, p.stem), ",".join(result),
                    f" ({scan.notes})" if scan.notes else "")
        return written


def check_output_dir(output_dir: str, needed_bytes: int = 0) -> None:
    """Make `output_dir` if needed and prove that it can hold the outputs: a probe file written,
    flushed to disk, renamed and removed (permission bits say nothing to root, or on a read-only
    mount), and `needed_bytes` of free space. An `InputError` if not; a folder made here is
    removed again then."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"output_dir {output_dir}: exists and is not a folder")
    made = not os.path.exists(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"output_dir {output_dir}: cannot be created ({e.strerror or e})") from None
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=output_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        renamed = probe + "-renamed"
        os.replace(probe, renamed)
        probe = renamed
        free = shutil.disk_usage(output_dir).free
        if free < needed_bytes:
            raise InputError(f"output_dir {output_dir}: {free / 2**20:.1f} MiB free, the outputs need up to "
                             f"{needed_bytes / 2**20:.1f} MiB")
    except OSError as e:
        _undo(output_dir, probe, made)
        raise InputError(f"output_dir {output_dir}: cannot write there ({e.strerror or e})") from None
    except InputError:
        _undo(output_dir, probe, made)
        raise
    _undo(output_dir, probe, False)


def _undo(output_dir: str, probe: str | None, remove_dir: bool) -> None:
    try:
        if probe is not None and os.path.exists(probe):
            os.remove(probe)
        if remove_dir:
            os.rmdir(output_dir)
    except OSError:
        pass


def check_finite(result: dict, source: str) -> None:
    """Refuse to write non-finite reconstructions (a wrong output must never look like a result)."""
    for key, value in result.items():
        if not np.isfinite(np.asarray(value)).all():
            raise InputError(f"{source}: the {key} output is not finite (NaN or infinite values); nothing written "
                             "for this input")


def write_set(result: dict[str, np.ndarray], stem: str, output_dir: str, reference, source: str) -> list[str]:
    """Write the outputs of one input (`<stem>_<output>.nii.gz`) as a set, once they are all
    finite: each to a temporary file first, then all renamed in a row, so an interruption while
    writing leaves the previous set (or none), not a mix. `reference`: the input's NIfTI image
    (its header and affine) or a 4x4 affine; `source`: the input, for the message."""
    check_finite(result, source)
    outputs = {os.path.join(output_dir, f"{stem}_{key}.nii.gz"): value for key, value in result.items()}
    temps: dict[str, str] = {}
    try:
        for path, value in outputs.items():
            tmp = tmp_path_beside(path, ".nii.gz")
            temps[path] = tmp
            is_image = isinstance(reference, nib.Nifti1Image)
            nib.save(nifti_like(value, reference) if is_image else nifti_array(value, reference), tmp)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    return list(outputs)
