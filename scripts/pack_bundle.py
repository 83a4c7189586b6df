"""Pack the bundle as a MONAI model-zoo zip: `<name>_v<version>.zip` unpacking into one folder
`<name>/` with configs/, models/, bundle/ (code and demo data), scripts/, docs/ and LICENSE.

    python scripts/pack_bundle.py                 # -> dist/mri_ct_reconstruction_v<version>.zip
    unzip dist/mri_ct_reconstruction_v*.zip -d /somewhere && cd /somewhere/mri_ct_reconstruction
    python -m monai.bundle run --config_file configs/inference.yaml --input_dir DIR --output_dir OUT

The unpacked folder is self-contained: `python -m monai.bundle run` from it imports the `bundle`
package next to the configs (the current directory comes first on Python's path). Caches, build
outputs and generated demo datalists are left out; the zip is written to a temporary file and
renamed.
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


def pack(out_dir: str, root: str = ROOT, name: str = BUNDLE_NAME) -> str:
    with open(os.path.join(root, "configs", "metadata.json")) as f:
        version = json.load(f)["version"]
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{name}_v{version}.zip")
    with atomic_output(target, ".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in bundle_files(root):
            zf.write(os.path.join(root, rel), f"{name}/{rel}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(ROOT, "dist"))
    p.add_argument("--name", default=BUNDLE_NAME, help="bundle (and top folder) name")
    args = p.parse_args(argv)
    target = pack(args.out_dir, name=args.name)
    size = os.path.getsize(target) / 2**20
    print(f"wrote {target} ({size:.1f} MiB, {len(bundle_files())} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
