import json

from conftest import ROOT

REQUIRED = {
    "version": str, "changelog": dict, "monai_version": str, "pytorch_version": str, "numpy_version": str,
    "required_packages_version": dict, "task": str, "description": str, "authors": str, "copyright": str,
    "network_data_format": dict, "intended_use": str, "data_source": str, "references": list,
}


def test_metadata_has_the_bundle_fields():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    for key, kind in REQUIRED.items():
        assert isinstance(meta.get(key), kind), key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image"} and set(fmt["outputs"]) == {"pred"}
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 1


def test_configs_have_the_standard_ids():
    from monai.bundle import ConfigParser

    train = ConfigParser()
    train.read_config(str(ROOT / "configs" / "train.yaml"))
    for key in ("bundle_root", "dataset_dir", "device", "network_def", "train#trainer", "train#dataset",
                "train#handlers", "validate#evaluator", "val_interval", "inferer", "initialize", "run", "finalize",
                "training"):
        assert key in train, key
    infer = ConfigParser()
    infer.read_config(str(ROOT / "configs" / "inference.yaml"))
    for key in ("bundle_root", "device", "network_def", "inferer", "initialize", "run", "finalize"):
        assert key in infer, key
