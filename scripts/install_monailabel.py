"""Add MONAI Label 0.8.5 to the bundle's own Python environment, without replacing its torch.

`pip install monailabel==0.8.5` into the bundle's environment does not work: its requirements
(monai[...] with torchvision, sam2 and mlflow; numpymaxflow and pydicom-seg, which declare
numpy < 2) make pip replace the CPU torch 2.13 with torch 2.14 built for CUDA (8.7 GB measured
here) and numpy 2 with 1.26. So this script installs MONAI Label and the packages its server
imports into one folder (default `.monailabel/`) beside the environment, pinned to the versions
the environment already has (pip's constraints from `pip freeze`), with pydicom < 3 (pydicom-seg,
which MONAI Label imports, breaks on pydicom 3; the bundle reads DICOM with either). torchvision
has no CPU build for torch 2.13 on the package index, and MONAI Label imports
`torchvision.utils` only for 2D image grids: a stand-in module that raises if called is written
instead. The server then runs with the bundle's interpreter and `PYTHONPATH=<folder>`:

    python scripts/install_monailabel.py                      # -> .monailabel/ (about 200 MB, 1 min)
    PYTHONPATH=.monailabel python -m monailabel.main start_server --app monailabel_app \\
        --studies STUDIES --conf models mri_ct_reconstruction --conf zoo_source local --host 127.0.0.1

The sample app `monaibundle` is copied out of the MONAI Label wheel to `<folder>/apps/monaibundle`.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "0.8.5"
NO_DEPS = [f"monailabel=={VERSION}", "pydicom-seg", "numpymaxflow"]  # their numpy < 2 pins are not needed to serve
WITH_DEPS = ["pydicom<3", "fastapi", "uvicorn", "pydantic", "pydantic-settings", "python-dotenv", "python-multipart",
             "httpx", "schedule", "timeloop", "expiringdict", "expiring_dict", "cachetools", "watchdog", "filelock",
             "passlib", "pyjwt", "bcrypt", "requests", "requests-toolbelt", "urllib3", "girder-client", "pynrrd",
             "dicomweb-client[gcp]", "pynetdicom", "einops", "pyyaml", "SimpleITK", "psutil", "shapely"]
TORCHVISION_STANDIN = {
    "__init__.py": '"""A stand-in for torchvision (scripts/install_monailabel.py): MONAI Label imports\n'
                   'torchvision.utils at start-up for 2D image grids that 3D bundles never make."""\n',
    "utils.py": 'def make_grid(*args, **kwargs):\n    raise NotImplementedError("torchvision stand-in: not installed")\n\n\n'
                'def save_image(*args, **kwargs):\n    raise NotImplementedError("torchvision stand-in: not installed")\n',
}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def install(target: str) -> str:
    """Build the overlay folder (skipped when it is complete) and return it."""
    marker = os.path.join(target, ".complete")
    if os.path.isfile(marker):
        return target
    os.makedirs(target, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout.splitlines()
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w") as f:
            f.write("\n".join(line for line in frozen if not line.lower().startswith("pydicom==")) + "\npydicom<3\n")
        pip("install", "--no-deps", "--target", target, *NO_DEPS)  # no --upgrade: its data files would replace the package
        pip("install", "--target", target, "--upgrade", "-c", constraints, *WITH_DEPS)
        pip("download", "--no-deps", "-d", tmp, f"monailabel=={VERSION}")
        wheel = glob.glob(os.path.join(tmp, "monailabel-*.whl"))[0]
        apps = os.path.join(target, "apps")
        with zipfile.ZipFile(wheel) as zf:
            prefix = next(n for n in zf.namelist() if n.endswith("sample-apps/monaibundle/main.py"))[: -len("main.py")]
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    out = os.path.join(apps, "monaibundle", name[len(prefix):])
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with zf.open(name) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    if not os.path.isfile(os.path.join(target, "monailabel", "main.py")):
        raise OSError(f"monailabel {VERSION} was not installed as a package in {target}")
    for leftover in ("torch", "torchgen", "numpy", "nvidia", "triton"):  # never shadow the environment's own
        path = os.path.join(target, leftover)
        if os.path.isdir(path):
            shutil.rmtree(path)
    tv = os.path.join(target, "torchvision")
    shutil.rmtree(tv, ignore_errors=True)
    os.makedirs(tv)
    for name, text in TORCHVISION_STANDIN.items():
        with open(os.path.join(tv, name), "w") as f:
            f.write(text)
    open(marker, "w").close()
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=os.path.join(ROOT, ".monailabel"))
    args = p.parse_args(argv)
    try:
        install(args.target)
    except (subprocess.CalledProcessError, OSError, StopIteration, IndexError) as e:
        print(f"error: monailabel {VERSION}: could not be installed into {args.target} ({e})", file=sys.stderr)
        return 1
    print(f"MONAI Label {VERSION} in {args.target}; start a server with PYTHONPATH={args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
