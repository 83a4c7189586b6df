"""3D volumes served as 2D slices: `SliceDataset` (loaded, normalised and sliced once, cached by
MONAI), the slicing axis, and the switch that runs the random slice transforms without metadata."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.pool import ThreadPool
from pathlib import Path
from types import MappingProxyType

import torch
from monai.data import CacheDataset, PersistentDataset, get_track_meta, set_track_meta
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, Transform
from monai.utils import convert_to_tensor
from tqdm import tqdm

from bundle.errors import InputError, find_input_error, format_error

SLICE_AXES = MappingProxyType({"sagittal": 0, "coronal": 1, "axial": 2})


def slice_axis_index(axis: int | str) -> int:
    """0, 1, 2 or "sagittal", "coronal", "axial" (in RAS orientation) -> 0, 1 or 2."""
    if isinstance(axis, str):
        if axis not in SLICE_AXES:
            raise InputError(f"unknown slice_axis {axis!r}: expected one of {', '.join(SLICE_AXES)} or 0, 1, 2")
        return SLICE_AXES[axis]
    if axis not in (0, 1, 2):
        raise InputError(f"slice_axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


def _file_hash(item: dict) -> bytes:
    """Cache key of a datalist item: the item and the size and modification time of its files
    (of every file of a DICOM series folder)."""
    stats: dict[str, list] = {}
    for key in ("image", "label"):
        path = item.get(key)
        if not isinstance(path, str) or not os.path.exists(path):
            continue
        files = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
        stats[key] = []
        for f in files:
            st = os.stat(f)
            stats[key].append((os.path.basename(f), st.st_size, st.st_mtime_ns))
    return pickle_hashing({**item, "_stat": stats})


def foreground_fraction(slice_2d: torch.Tensor, threshold: float) -> float:
    return float((slice_2d > threshold).float().mean())


class VolumeSlices(Transform):
    """A volume item -> the list of its non-empty 2D slice items (deterministic, so MONAI's
    `CacheDataset` / `PersistentDataset` keep its output).

    Args:
        volume_transform: load, check, channel first, orient, normalise one volume item; must give
            "image" of shape (1, X, Y, Z) and "image_scale".
        slice_axis: spatial axis to slice along (after orientation): 0/"sagittal", 1/"coronal", 2/"axial".
        min_foreground: slices whose fraction of voxels above 10% of the volume maximum is below
            this are skipped as empty.
        data_range: if given, the "volume_max" of every slice, else the volume's maximum.
    """

    def __init__(
        self,
        volume_transform: Callable,
        slice_axis: int | str = "axial",
        min_foreground: float = 0.05,
        data_range: float | None = None,
    ) -> None:
        self.volume_transform = volume_transform
        self.axis = slice_axis_index(slice_axis)
        self.min_foreground = float(min_foreground)
        self.data_range = None if data_range is None else float(data_range)

    def __call__(self, item: dict) -> list[dict]:
        # MONAI Label's datalists pair an "image" with a "label"; here the label is the fully
        # sampled reference the acquisition is simulated from, so it is the volume when present.
        path = str(item.get("label") or item["image"])
        if not os.path.exists(path):
            raise InputError(f"{path}: file not found")
        try:
            d = self.volume_transform({**item, "image": path})
        except Exception as e:  # a reader's deep error becomes one line naming the file
            msg = format_error(e)
            if msg.startswith(path) or path in msg.split(":")[0]:
                raise InputError(msg) from None
            raise InputError(f"{path}: cannot be loaded as a 3D image ({msg.splitlines()[-1][:200]})") from None
        pixdim = [float(v) for v in getattr(d["image"], "pixdim", [1.0, 1.0, 1.0])][:3]
        spacing = [v for i, v in enumerate(pixdim) if i != self.axis]
        vol = convert_to_tensor(d["image"], track_meta=False).float()
        if vol.ndim != 4 or vol.shape[0] != 1:
            raise InputError(f"{path}: expected a single-channel 3D volume, got shape {tuple(vol.shape)}")
        vmax = float(vol.max())
        data_max = vmax if self.data_range is None else self.data_range
        vol = vol.movedim(self.axis + 1, 1)  # (1, S, H, W)
        out = []
        for i in range(vol.shape[1]):
            s = vol[:, i]
            if foreground_fraction(s, 0.1 * vmax) < self.min_foreground:
                continue
            out.append({
                "image": s.clone(),
                "filename": path,
                "slice_index": i,
                "slice_id": f"{os.path.basename(path)}:{i}",
                "volume_max": data_max,
                "image_scale": float(d["image_scale"]),
                "pixel_spacing": torch.tensor(spacing, dtype=torch.float32),
            })
        return out


def _fingerprint(obj, depth: int = 0):
    """The settings of a transform (class names and plain attribute values, recursively) as plain
    data, for the on-disk cache key."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_fingerprint(v, depth + 1) for v in obj][:64]
    if isinstance(obj, dict):
        return {str(k): _fingerprint(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, type):
        return obj.__qualname__
    if isinstance(obj, torch.Tensor) and obj.numel() <= 64:
        return obj.tolist()
    if depth > 6 or not hasattr(obj, "__dict__"):
        return type(obj).__qualname__
    return [type(obj).__qualname__, _fingerprint({k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth)]


class _TrackMetaOff:
    """MONAI's `track_meta` switch turned off while at least one user is inside, restored when the
    last one leaves. The switch is process-wide in MONAI (it offers no scoped form), so the count
    of users inside has to be process-wide too: this one object is the package's only module-level
    state, and it is back at zero whenever no slice transform runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before = True

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._before = get_track_meta()
                set_track_meta(False)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    set_track_meta(self._before)


meta_tracking_off = _TrackMetaOff()
meta_tracking_off.__doc__ = """Run MONAI transforms on plain tensors, without metadata.

While MONAI's process-wide `track_meta` switch is on, its transforms turn plain tensors into
MetaTensors and record every operation for inversion: about half the time of the random slice
transforms (scripts/benchmark.py's data rows). The cached slices carry their spacing as a plain
item and nothing inverts these transforms, so the switch is off while they run (the same values,
tested) and restored when the last concurrent user leaves."""


class SliceDataset(torch.utils.data.Dataset):
    """2D slices of 3D volumes: each volume is loaded, normalised and sliced once, its slices cached.

    The deterministic part (`VolumeSlices`: load, check, orient, normalise, slice, drop empty
    slices) is cached by MONAI: in memory with `CacheDataset` (default), or on disk with
    `PersistentDataset` when `cache_dir` is given, so later runs (evaluation, resumed or repeated
    trainings) skip reading and normalising the volumes. Random transforms (`slice_transform`) run
    after the cache, on each access, on plain tensors (`meta_tracking_off`).

    Args:
        data: datalist items with an "image" path (a NIfTI file, a DICOM series folder or a
            fastMRI HDF5 file), optionally a "label": the fully sampled reference, used instead
            of "image" when given (the datalists MONAI Label writes).
        volume_transform: deterministic transform of one volume item (load, check, channel first,
            orientation, normalisation); must give "image" of shape (1, X, Y, Z) and "image_scale".
        slice_transform: transform applied to each slice item on access (augmentation, undersampling).
        cache_transform: deterministic transform applied once to each slice when the dataset is
            built (and again by `recache`), its result cached: e.g. a CT scan simulation, too
            slow to repeat every epoch. Random transforms belong in `slice_transform`. If it has
            a `call_batch(items)` method, slices of one volume are passed in batches of 8.
        slice_axis: spatial axis to slice along (after orientation): 0/"sagittal", 1/"coronal", 2/"axial".
        min_foreground: slices whose fraction of voxels above 10% of the volume maximum is below
            this are skipped as empty.
        progress: show a progress bar while loading volumes.
        data_range: if given, the "volume_max" of every item (the metrics' data range), e.g. 1.0
            for CT on the fixed [0, 1] HU-window scale; by default the volume's maximum.
        repeat: each slice appears this many times per epoch (for tiny datasets such as a few
            radiographs, where each access draws a new random patch and noise).
        cache_dir: a folder for MONAI's `PersistentDataset` (made if missing; one file per volume,
            keyed by the file's path, size and modification time and by the volume transform's
            settings); None keeps the cache in memory only.
        num_workers: threads that load the volumes when the cache is built.

    Each item: "image" (1, H, W), "filename", "slice_index", "slice_id" ("file:index"),
    "volume_max" (maximum of the normalised volume), "image_scale" (the normalisation scale) and
    "pixel_spacing" (the in-plane spacing in mm, (2,)).
    """

    def __init__(
        self,
        data: Sequence[dict],
        volume_transform: Callable,
        slice_transform: Callable | None = None,
        slice_axis: int | str = "axial",
        min_foreground: float = 0.05,
        progress: bool = True,
        cache_transform: Callable | None = None,
        data_range: float | None = None,
        repeat: int = 1,
        cache_dir: str | None = None,
        num_workers: int = 1,
    ) -> None:
        if not data:
            raise InputError("the dataset is empty: no volumes in the datalist")
        self.slice_transform = slice_transform
        slicer = VolumeSlices(volume_transform, slice_axis, min_foreground, data_range)
        self.axis, self.data_range = slicer.axis, slicer.data_range
        if int(repeat) < 1:
            raise InputError(f"repeat must be at least 1, got {repeat!r}")
        self.repeat = int(repeat)
        self.progress = progress
        self.cache_batch = 8
        self.raw_items: list[dict] = [s for volume in self._cached_volumes(data, slicer, cache_dir, num_workers)
                                      for s in volume]
        if not self.raw_items:
            raise InputError("no non-empty slices in the dataset")
        self.recache(cache_transform)

    def _cached_volumes(self, data, slicer: VolumeSlices, cache_dir: str | None, num_workers: int) -> list[list[dict]]:
        workers = max(1, int(num_workers or 1))
        try:
            if cache_dir is None:
                ds = CacheDataset(list(data), Compose([slicer]), num_workers=workers, progress=self.progress,
                                  copy_cache=False)
                return [ds[i] for i in range(len(ds))]
            try:
                os.makedirs(cache_dir, exist_ok=True)
            except OSError as e:
                raise InputError(f"cache_dir {cache_dir}: cannot be created ({e.strerror})") from None
            # MONAI's default key is the datalist item alone (or the transforms' class names): an
            # edited file or a changed normalisation would reuse a stale cache, so the key here
            # adds the file's size and modification time and the volume transform's settings.
            settings = pickle_hashing({"slicer": _fingerprint(slicer)})
            persistent = PersistentDataset(list(data), Compose([slicer]), cache_dir, hash_func=_file_hash,
                                           hash_transform=lambda _: settings)

            def load(i: int) -> list[dict]:
                try:
                    return persistent[i]
                except Exception as e:
                    # MONAI recomputes a cache file it cannot unpickle, but not a truncated one
                    # (torch.load's RuntimeError): drop it and read the volume again, once.
                    # the file name PersistentDataset gives this item
                    stale = Path(cache_dir) / f"{persistent.hash_func(persistent.data[i]).decode()}{persistent.transform_hash}.pt"
                    if find_input_error(e) is not None or not stale.is_file():
                        raise
                    logging.getLogger(__name__).warning("%s: unreadable cache file, recomputed", stale)
                    stale.unlink()
                    return persistent[i]

            with ThreadPool(workers) as pool:
                jobs = pool.imap(load, range(len(persistent)))
                return list(tqdm(jobs, total=len(persistent), desc="loading volumes", unit="vol", disable=not self.progress))
        except InputError:
            raise
        except Exception as e:  # MONAI wraps the transform's InputError in RuntimeErrors
            raise InputError(format_error(e)) from None

    def recache(self, cache_transform: Callable | None = None) -> None:
        """(Re)apply `cache_transform` to every slice, e.g. after changing the simulated scan."""
        self.cache_transform = cache_transform
        self.items: list[dict]
        if cache_transform is None:
            self.items = self.raw_items
            return
        batch_call = getattr(cache_transform, "call_batch", None)
        if batch_call is None:
            self.items = [
                cache_transform(dict(item))
                for item in tqdm(self.raw_items, desc="simulating", unit="slice", disable=not self.progress)
            ]
            return
        # batches of slices of one volume (one shape and spacing)
        self.items = []
        batch: list[dict] = []
        with tqdm(total=len(self.raw_items), desc="simulating", unit="slice", disable=not self.progress) as bar:
            for item in self.raw_items + [None]:
                if batch and (item is None or len(batch) == self.cache_batch or item["filename"] != batch[0]["filename"]):
                    self.items.extend(batch_call(batch))
                    bar.update(len(batch))
                    batch = []
                if item is not None:
                    batch.append(item)

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, index: int) -> dict:
        item = dict(self.items[index % len(self.items)])
        if self.slice_transform is None:
            return item
        with meta_tracking_off():
            return self.slice_transform(item)


class RepeatedItems(torch.utils.data.Dataset):
    """Items prepared once (`self.items`), each served `repeat` times per epoch through `transform`."""

    items: list[dict]
    transform: Callable | None = None
    repeat: int = 1

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, index: int) -> dict:
        item = dict(self.items[index % len(self.items)])
        return self.transform(item) if self.transform is not None else item


class RawKspaceSlices(RepeatedItems):
    """The slices of fully sampled raw multi-coil files (`bundle.data.rawkspace.read_raw`), for
    training and validating the multi-coil network on real coils: items {"image": (C, H, W)
    complex k-space, "filename", "slice_id", "volume_max" (the maximum of the file's fully
    sampled RSS, 1 when `normalise`)}, each `repeat` times, then `transform` (augmentation,
    undersampling).

    Args:
        data: datalist items with an "image" path to a fully sampled raw file.
        transform: applied to each item on access.
        repeat: each slice appears this many times per epoch.
        normalise: divide each file's k-space by its RSS maximum (scanner scales differ by orders
            of magnitude; the loss's pixel term is on the raw values).
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, repeat: int = 1,
                 normalise: bool = True) -> None:
        from bundle.data.rawkspace import read_raw
        from bundle.physics.mri import ifft2c
        from bundle.physics.mri_sense import rss

        if int(repeat) < 1:
            raise InputError(f"repeat must be at least 1, got {repeat!r}")
        self.items: list[dict] = []
        for item in data:
            path = str(item["image"])
            raw = read_raw(path)
            if raw.mask is not None:
                raise InputError(f"{path}: undersampled; training and validation need fully sampled k-space")
            k = torch.from_numpy(raw.kspace)
            vmax = float(rss(ifft2c(k), 1).max())
            if normalise:
                k, vmax = k / vmax, 1.0
            name = os.path.basename(path)
            self.items += [{"image": k[s], "filename": name, "slice_id": f"{name}:{s}", "volume_max": vmax}
                           for s in range(k.shape[0])]
        if not self.items:
            raise InputError("no raw k-space slices in the datalist")
        self.transform, self.repeat = transform, int(repeat)


class MeasuredCTSlices(RepeatedItems):
    """Training and validation pairs from measured CT scans with a full-data reference beside them
    (HTC2022: the organisers' FBP): items {"image": (1, H, W) FBP of a sparse or limited-angle
    subset of the measured views, "label": (1, H, W) the reference, both on the [0, 1] scale of
    `window` (HU of the attenuation per mm), "filename", "slice_id", "volume_max": 1}. The FBP
    inputs are computed once here: each subset [views, arc_deg] at `offsets` rotations of the
    first view (every arc start for limited angles), so one scan gives many different inputs.

    Args:
        data: datalist items with an "image" path to a measured scan with a reference.
        subsets: [views, arc degrees] pairs, e.g. [[60, 360], [30, 360], [null, 90]] (null: every
            view in the arc).
        offsets: rotations of each subset per scan.
        window, mu_water: the network's unit scale (as the medical CT model's).
        filter_name: the FBP filter.
        transform: applied to each item on access (augmentation, crops).
        repeat: each item this many times per epoch.
    """

    def __init__(self, data: Sequence[dict], subsets: Sequence[Sequence] = ((60, 360),), offsets: int = 1,
                 window: Sequence[float] = (-1024.0, 3071.0), mu_water: float = 0.0192, filter_name: str = "ramp",
                 transform: Callable | None = None, repeat: int = 1) -> None:
        from bundle.data.ctraw import choose_views, read_measured_ct
        from bundle.physics.ct_fan import projector_for, select_views
        from bundle.transforms.ct import mu_to_unit

        if int(repeat) < 1 or int(offsets) < 1:
            raise InputError(f"repeat and offsets must be at least 1, got {repeat!r}, {offsets!r}")

        def unit(mu: torch.Tensor) -> torch.Tensor:
            return mu_to_unit(mu, window, mu_water).float()

        self.items: list[dict] = []
        for item in data:
            path = str(item["image"])
            scan = read_measured_ct(path)
            if scan.reference is None:
                raise InputError(f"{path}: no full-data reference beside it to train or validate on")
            name = os.path.basename(path)
            label = unit(torch.from_numpy(scan.reference))
            angles = torch.rad2deg(scan.geometry.angles()).tolist()
            for views, arc in subsets:
                arc = float(arc)
                for k in range(int(offsets)):
                    # rotations within one sparse step over the circle; arc starts around it otherwise
                    start = k * (360.0 / (views or 360)) / int(offsets) if arc >= 360 else 360.0 * k / int(offsets)
                    idx = choose_views(angles, views, arc, start)
                    geom = select_views(scan.geometry, idx)
                    fbp = projector_for(geom).fbp(torch.from_numpy(scan.sinogram[:, idx]), filter_name)
                    tag = f"{name}:{views or len(idx)}v{arc:g}:{start:g}"
                    for s in range(scan.slices):
                        self.items.append({"image": unit(fbp[s])[None], "label": label[s][None], "filename": tag,
                                           "slice_id": f"{tag}:{s}", "volume_max": 1.0})
        if not self.items:
            raise InputError("no measured CT scans in the datalist")
        self.transform, self.repeat = transform, int(repeat)
