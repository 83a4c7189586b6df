"""The slice cache (memory, disk) and the random slice transforms, with and without metadata."""

from __future__ import annotations

import time

import torch



def rows(add, args, parser) -> None:
    """Building the training set's slice cache (MONAI CacheDataset / PersistentDataset)."""
    import shutil
    import tempfile

    from bundle.data import SliceDataset, load_datalist

    items = load_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"), "training")
    items = items[:2] if args.quick else items
    volume_transform = parser.get_parsed_content("volume_transforms")
    cache_dir = tempfile.mkdtemp(prefix="slice_cache_")
    try:
        for what, kwargs in [("in memory (CacheDataset), 1 thread", {"num_workers": 1}),
                             ("in memory (CacheDataset), 2 threads", {"num_workers": 2}),
                             ("on disk (PersistentDataset), first run: writes the cache", {"cache_dir": cache_dir}),
                             ("on disk (PersistentDataset), next run: reads the cache", {"cache_dir": cache_dir})]:
            t0 = time.perf_counter()
            ds = SliceDataset(items, volume_transform, progress=False, **kwargs)
            add("data", f"training set ({len(items)} volumes, {len(ds)} slices) cached {what}",
                time.perf_counter() - t0, "s")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    # the random slice transforms (augmentation, undersampling) as a DataLoader worker runs them (one
    # thread), without MONAI's metadata as the bundle does since 0.6.0, then with it as before
    from monai.data import get_track_meta

    ds = parser.get_parsed_content("train#dataset")
    n = min(len(ds), 8 if args.quick else 300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for label, call in (("without MONAI metadata (the bundle)", lambda i: ds[i]),
                            ("with MONAI metadata tracked", lambda i: ds.slice_transform(dict(ds.items[i])))):
            assert get_track_meta()  # on outside the dataset: the second row tracks it
            call(0)
            t0 = time.perf_counter()
            for i in range(n):
                call(i)
            add("data", f"random slice transforms per training slice, {label}, 1 thread",
                (time.perf_counter() - t0) / n * 1000, "ms")
    finally:
        torch.set_num_threads(threads)
