"""Pack the bundle as a MONAI model-zoo zip: `<name>_v<version>.zip` unpacking into one folder
`<name>/` with configs/, models/, bundle/ (code and demo data), scripts/, docs/ and LICENSE.

    python scripts/pack_bundle.py                 # -> dist/mri_ct_reconstruction_v<version>.zip
    unzip dist/mri_ct_reconstruction_v*.zip -d /somewhere && cd /somewhere/mri_ct_reconstruction
    python -m monai.bundle run --config_file configs/inference.yaml --input_dir DIR --output_dir OUT

The unpacked folder is self-contained: `python -m monai.bundle run` from it imports the `bundle`
package next to the configs (the current directory comes first on Python's path). Caches, build
outputs and generated demo datalists are left out; the zip is written to a temporary file and
renamed.

MONAI Label serves one model per bundle folder, from its `configs/inference.yaml` and
`models/model.pt`. `--modality ct` (or pet) packs a folder `<modality>_reconstruction/` whose
`configs/inference.yaml` is the modality's inference config and whose `models/model.pt` is its
weights (both also kept under their own names), with metadata.json naming it:

    python scripts/pack_bundle.py --modality ct   # -> dist/ct_reconstruction_v<version>.zip
    python scripts/pack_bundle.py --modality mri --weights model_light.pt --name mri_light_reconstruction
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bundle.data.io import atomic_output  # noqa: E402

BUNDLE_NAME = "mri_ct_reconstruction"
INCLUDE = ("configs", "models", "bundle", "scripts", "docs", "LICENSE")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
SKIP_FILES = {"bundle/demo_data/datalist.json", "bundle/demo_data/ct/datalist.json", "bundle/demo_data/xray/datalist.json"}


def bundle_files(root: str = ROOT) -> list[str]:
    """Relative paths of the files that go into the zip, sorted."""
    out = []
    for entry in INCLUDE:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            out.append(entry)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                if name.startswith(".") or name.endswith((".pyc", ".pyo")) or rel in SKIP_FILES:
                    continue
                out.append(rel)
    return sorted(out)


# modality -> (inference config, weights, what the output is): the served model of a MONAI Label folder
SERVED = {
    "mri": ("inference.yaml", "model.pt", "MR", "reconstructed magnitude image"),
    "ct": ("inference_ct.yaml", "model_ct.pt", "CT", "reconstructed CT image (HU)"),
    "pet": ("inference_pet.yaml", "model_pet.pt", "PT", "reconstructed activity image"),
}


def served_metadata(meta: dict, modality: str) -> dict:
    """metadata.json of a one-model folder: its name, and what its input and output are."""
    _, _, code, what = SERVED[modality]
    meta = json.loads(json.dumps(meta))
    meta["name"] = f"{modality.upper()} reconstruction"
    fmt = meta["network_data_format"]
    for key in ("inputs", "outputs"):
        entry = next(iter(fmt[key].values()))
        entry["modality"] = code
    next(iter(fmt["outputs"].values()))["channel_def"] = {"0": what}
    return meta


def pack(out_dir: str, root: str = ROOT, name: str = BUNDLE_NAME, modality: str | None = None,
         weights: str | None = None) -> str:
    with open(os.path.join(root, "configs", "metadata.json")) as f:
        meta = json.load(f)
    version = meta["version"]
    if modality is not None and name == BUNDLE_NAME:
        name = f"{modality}_reconstruction"
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{name}_v{version}.zip")
    replaced: dict[str, str | bytes] = {}
    if modality is not None:
        config, default_weights, _, _ = SERVED[modality]
        weights = weights or default_weights
        replaced = {"configs/inference.yaml": os.path.join(root, "configs", config),
                    "models/model.pt": os.path.join(root, "models", weights),
                    "configs/metadata.json": json.dumps(served_metadata(meta, modality), indent=4).encode()}
    files = bundle_files(root)
    if modality is not None:  # its own weights only: MONAI Label offers every models/*.pt as model_filename
        keep = {"models/model.pt", f"models/{weights}"}
        files = [f for f in files if not f.startswith("models/") or f in keep]
    with atomic_output(target, ".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            source = replaced.get(rel, os.path.join(root, rel))
            if isinstance(source, bytes):
                zf.writestr(f"{name}/{rel}", source)
            else:
                zf.write(source, f"{name}/{rel}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(ROOT, "dist"))
    p.add_argument("--name", default=BUNDLE_NAME, help="bundle (and top folder) name")
    p.add_argument("--modality", choices=sorted(SERVED), default=None,
                   help="a one-model folder for MONAI Label: that modality's inference config and weights as "
                        "configs/inference.yaml and models/model.pt")
    p.add_argument("--weights", default=None,
                   help="with --modality: another weights file of models/ as models/model.pt (e.g. model_light.pt, "
                        "model_ct_lowdose.pt; the network is built from its metadata)")
    args = p.parse_args(argv)
    target = pack(args.out_dir, name=args.name, modality=args.modality, weights=args.weights)
    size = os.path.getsize(target) / 2**20
    print(f"wrote {target} ({size:.1f} MiB, {len(bundle_files())} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
