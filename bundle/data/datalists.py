"""MONAI datalists: the checked reading of a split."""

from __future__ import annotations

import json
import os

from monai.data import load_decathlon_datalist

from bundle.errors import InputError


def load_datalist(datalist: str, dataset_dir: str, key: str) -> list[dict]:
    """The `key` list ("training", "validation", "test") of a MONAI datalist, paths made absolute.

    Raises `InputError` for a missing or unreadable datalist, a missing or empty list, or a
    listed file that does not exist.
    """
    if not os.path.isfile(datalist):
        raise InputError(f"datalist {datalist}: file not found")
    try:
        with open(datalist) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"datalist {datalist}: not valid JSON ({e})") from None
    if not isinstance(content, dict) or not content.get(key):
        raise InputError(f"datalist {datalist}: the {key!r} list is missing or empty")
    items = load_decathlon_datalist(datalist, is_segmentation=False, data_list_key=key, base_dir=dataset_dir)
    for item in items:
        if "image" not in item:
            raise InputError(f"datalist {datalist}: an item of {key!r} has no 'image': {item}")
        for k in ("image", "label"):
            if k in item and not os.path.exists(item[k]):
                raise InputError(f"{item[k]}: file not found (listed in {datalist})")
    return items
