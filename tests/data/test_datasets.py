import json

import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from bundle.data import DEMO_DIR, SliceDataset, ensure_datalist, load_datalist
from bundle.data.demo import demo_datalist
from bundle.errors import InputError
from bundle.transforms import CheckVolumed, ScaleByPercentiled


def volume_transform():
    return Compose([
        LoadImaged(keys="image", image_only=True),
        CheckVolumed(keys="image"),
        EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
        Orientationd(keys="image", axcodes="RAS"),
        ScaleByPercentiled(keys="image"),
    ])


def test_demo_split_is_by_subject_and_files_exist():
    dl = demo_datalist()
    subjects = {s: {d["image"] for d in v} for s, v in dl.items()}
    assert not subjects["training"] & subjects["validation"]
    assert not subjects["training"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    assert all((DEMO_DIR / f).is_file() for files in subjects.values() for f in files)


def test_ensure_datalist_is_idempotent(tmp_path, monkeypatch):
    import bundle.data.demo as data

    monkeypatch.setattr(data, "DEMO_DIR", tmp_path)
    path = tmp_path / "datalist.json"
    ensure_datalist(str(path), str(tmp_path))
    first = path.read_text()
    mtime = path.stat().st_mtime_ns
    ensure_datalist(str(path), str(tmp_path))
    assert path.read_text() == first and path.stat().st_mtime_ns == mtime
    assert json.loads(first) == demo_datalist()


def test_datalist_errors(tmp_path, tiny_dataset):
    with pytest.raises(InputError, match="no such directory"):
        ensure_datalist(str(tmp_path / "x.json"), str(tmp_path / "nope"))
    with pytest.raises(InputError, match="x.json: file not found"):
        ensure_datalist(str(tmp_path / "x.json"), str(tmp_path))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"training": []}))
    with pytest.raises(InputError, match="'training' list is missing or empty"):
        load_datalist(str(empty), str(tmp_path), "training")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_datalist(str(broken), str(tmp_path), "training")
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"training": [{"image": "gone.nii.gz"}]}))
    with pytest.raises(InputError, match="gone.nii.gz: file not found"):
        load_datalist(str(missing), str(tmp_path), "training")


def test_slice_dataset_skips_empty_slices(tiny_dataset):
    items = load_datalist(tiny_dataset["datalist"], tiny_dataset["dataset_dir"], "training")
    ds = SliceDataset(items, volume_transform(), slice_axis="axial", progress=False)
    assert len(ds) == 30  # 3 volumes x 10 axial slices, none empty
    item = ds[0]
    assert item["image"].shape == (1, 40, 48)
    assert item["slice_id"].endswith(":0") and item["volume_max"] > 0
    ds_cor = SliceDataset(items, volume_transform(), slice_axis="coronal", min_foreground=0.05, progress=False)
    assert ds_cor[0]["image"].shape == (1, 40, 10)
    assert len(ds_cor) < 3 * 48  # the coronal edge slices outside the phantom are skipped


def test_slice_dataset_bad_files(tmp_path):
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.nii.gz"):
        SliceDataset([{"image": str(txt)}], volume_transform(), progress=False)
    with pytest.raises(InputError, match="empty"):
        SliceDataset([], volume_transform(), progress=False)
    with pytest.raises(InputError, match="unknown slice_axis"):
        SliceDataset([{"image": str(txt)}], volume_transform(), slice_axis="oblique", progress=False)


def test_slice_dataset_cache_transform_repeat_and_data_range(tiny_dataset):
    items = load_datalist(tiny_dataset["datalist"], tiny_dataset["dataset_dir"], "training")[:1]
    calls = []

    class Double:
        def __call__(self, d):
            calls.append(1)
            return {**d, "image": d["image"] * 2}

    class Batched(Double):
        def call_batch(self, batch):
            calls.append(len(batch))
            return [{**d, "image": d["image"] * 2} for d in batch]

    plain = SliceDataset(items, volume_transform(), progress=False)
    cached = SliceDataset(items, volume_transform(), cache_transform=Double(), progress=False, repeat=3,
                          data_range=1.0)
    n = len(plain)
    assert len(calls) == n  # applied once per slice when built, not on access
    assert len(cached) == 3 * n
    assert torch.equal(cached[n + 1]["image"], 2 * plain[1]["image"]) and len(calls) == n
    assert cached[0]["volume_max"] == 1.0 and plain[0]["volume_max"] != 1.0
    calls.clear()
    batched = SliceDataset(items, volume_transform(), cache_transform=Batched(), progress=False)
    assert sum(calls) == n and max(calls) <= 8  # slices of one volume, in batches of 8
    assert torch.equal(batched[2]["image"], 2 * plain[2]["image"])
    with pytest.raises(InputError, match="repeat"):
        SliceDataset(items, volume_transform(), progress=False, repeat=0)


def test_slice_dataset_cache_in_memory_and_on_disk(tiny_dataset, tmp_path):
    """MONAI's CacheDataset (threads) and PersistentDataset give the same slices; the disk cache
    is reused by a second dataset and invalidated by an edited file or other settings."""
    from conftest import phantom_volume, write_nifti

    items = load_datalist(tiny_dataset["datalist"], tiny_dataset["dataset_dir"], "training")
    loads = []

    class Counting(Compose):
        def __call__(self, d, *args, **kwargs):
            loads.append(d["image"])
            return super().__call__(d, *args, **kwargs)

    def counting(percentile=99.5):
        return Counting(list(volume_transform().transforms[:-1]) + [ScaleByPercentiled(keys="image", percentile=percentile)])

    ref = SliceDataset(items, volume_transform(), progress=False)
    threads = SliceDataset(items, volume_transform(), progress=False, num_workers=2)
    cache = tmp_path / "cache"
    first = SliceDataset(items, counting(), progress=False, cache_dir=str(cache))
    assert len(loads) == 3 and len(list(cache.glob("*.pt"))) == 3  # one file per volume
    second = SliceDataset(items, counting(), progress=False, cache_dir=str(cache), num_workers=2)
    assert len(loads) == 3  # all read from the disk cache
    for ds in (threads, first, second):
        assert [d["slice_id"] for d in ds.items] == [d["slice_id"] for d in ref.items]
        assert all(torch.equal(a["image"], b["image"]) and a["volume_max"] == b["volume_max"]
                   for a, b in zip(ds.items, ref.items))
    SliceDataset(items, counting(percentile=90.0), progress=False, cache_dir=str(cache))
    assert len(loads) == 6  # other settings: other keys
    entry = max(cache.glob("*.pt"), key=lambda f: f.stat().st_mtime_ns)  # the percentile-90 entry of the last volume
    entry.write_bytes(entry.read_bytes()[:100])  # truncated (a crash of an older writer, a full disk)
    again = SliceDataset(items, counting(percentile=90.0), progress=False, cache_dir=str(cache))
    assert len(loads) == 7 and len(again) == len(ref)  # that volume read again, the others from the cache
    write_nifti(items[0]["image"], phantom_volume(seed=7))  # the file changes: its entry is stale
    fresh = SliceDataset(items, counting(), progress=False, cache_dir=str(cache))
    assert len(loads) == 8 and not torch.equal(fresh.items[0]["image"], ref.items[0]["image"])


def test_slice_dataset_cache_errors(tmp_path):
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.nii.gz"):  # still one line naming the file through MONAI's cache
        SliceDataset([{"image": str(txt)}], volume_transform(), progress=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(InputError, match="notes.nii.gz"):
        SliceDataset([{"image": str(txt)}], volume_transform(), progress=False, num_workers=2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cache_dir .*cannot be created"):
        SliceDataset([{"image": str(txt)}], volume_transform(), progress=False, cache_dir=str(blocker / "sub"))


def test_slice_transforms_run_without_metadata(tiny_dataset):
    """The random slice transforms run on plain tensors (MONAI's meta tracking off while they run)
    and give the values they give with metadata, every augmentation drawn; the switch is restored,
    also after an error and after concurrent use."""
    from concurrent.futures import ThreadPoolExecutor

    from monai.bundle import ConfigParser
    from monai.data import get_track_meta

    from bundle.data import meta_tracking_off

    parser = ConfigParser()
    parser.read_config("configs/train.yaml")
    parser.update({"dataset_dir": tiny_dataset["dataset_dir"], "datalist": tiny_dataset["datalist"],
                   "train#dataset#progress": False, "patch_size": [32, 32]})
    for key in ("rotate", "translate", "scale", "contrast", "intensity"):
        parser[f"aug_{key}_prob"] = 1.0
    ds = parser.get_parsed_content("train#dataset")
    seen = []

    def spy(d):
        out = transforms.transforms[0](d)  # the rotation
        seen.append(type(out["image"]))
        return out

    transforms = ds.slice_transform
    for i in range(4):
        transforms.set_random_state(seed=i)
        with_meta = transforms(dict(ds.items[i]))  # tracking on, as MONAI's default
        assert isinstance(with_meta["label"], torch.Tensor) and get_track_meta()
        transforms.set_random_state(seed=i)
        plain = ds[i]
        for key in ("image", "label", "kspace", "mask"):
            assert type(plain[key]) is torch.Tensor and torch.equal(plain[key], torch.as_tensor(with_meta[key]))
    ds.slice_transform = Compose([spy])
    ds[0]
    assert seen == [torch.Tensor]  # the rotation made no MetaTensor
    assert get_track_meta()

    def boom(d):
        raise ValueError("bad slice")

    ds.slice_transform = boom
    with pytest.raises(ValueError, match="bad slice"):
        ds[0]
    assert get_track_meta()

    def slow(_):
        with meta_tracking_off():
            assert not get_track_meta()
            return sum(range(20000))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(slow, range(64)))
    assert get_track_meta()
