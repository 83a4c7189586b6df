"""The package's layering rules, checked on the code itself: no mutable module-level state, the
physics layer free of MONAI and files, the reporting code (scipy.stats, CS) out of bundle runs."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_env

import bundle

MODULES = sorted(m.name for m in pkgutil.walk_packages(bundle.__path__, "bundle."))
# MONAI's track_meta switch is process-wide, so the count of its users is too (bundle.data.datasets)
ALLOWED = {("bundle.data.datasets", "meta_tracking_off")}


@pytest.mark.parametrize("name", MODULES)
def test_no_mutable_module_level_state(name):
    """Module attributes defined in the module are constants: no dict, list, set, writable array,
    tensor or lock (caches belong to objects, e.g. a projector's grids and system matrix)."""
    module = importlib.import_module(name)
    bad = []
    for attr, value in vars(module).items():
        if attr.startswith("__") or (name, attr) in ALLOWED or getattr(value, "__module__", name) != name:
            continue
        if isinstance(value, (dict, list, set, bytearray)) or (isinstance(value, np.ndarray) and value.flags.writeable):
            bad.append(attr)
        elif isinstance(value, (torch.Tensor, type(threading.Lock()))):
            bad.append(attr)
    assert not bad, f"{name}: mutable module-level {bad}"


def test_no_global_statements_in_the_package():
    for path in Path(ROOT, "bundle").rglob("*.py"):
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], path


def test_physics_imports_neither_monai_nor_file_io():
    for path in Path(ROOT, "bundle", "physics").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & {"monai", "nibabel", "pydicom", "h5py", "itk", "ignite"}, (path, names)
        assert "open(" not in path.read_text(), path


def test_only_the_reporting_code_imports_scipy():
    """Outside the reports, scipy appears only as scipy.io in the measured-CT reader (MATLAB files)
    and as scipy.ndimage (labelling, hole filling, distance maps) in the PET phantoms and the PET
    body outline, imported inside the functions that use them."""
    for path in Path(ROOT, "bundle").rglob("*.py"):
        if "reporting" in path.parts:
            continue
        text = path.read_text()
        if path.name == "ctraw.py":
            text = text.replace("import scipy.io", "").replace("scipy.io.loadmat", "")
        if path.name == "pet_phantoms.py" or (path.name == "pet.py" and path.parent.name == "inference"):
            text = text.replace("from scipy import ndimage as ndi", "")
        assert "scipy" not in text, path


def test_a_bundle_inference_run_does_not_load_the_reporting_code(tmp_path):
    """The MRI inference config parsed and its objects built as `monai.bundle run` does: neither
    bundle.reporting (CS, scipy.stats, matplotlib figures) nor its modules are imported."""
    code = (
        "import sys\n"
        "from monai.bundle import ConfigParser\n"
        "p = ConfigParser(); p.read_config('configs/inference.yaml')\n"
        "p.get_parsed_content('runner'); p.get_parsed_content('inferer')\n"
        "print(sorted(m for m in sys.modules if m.startswith('bundle.reporting')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
