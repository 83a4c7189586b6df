"""The hostile-input table: every case of the probe in issue 22 and more. Each case runs the real
command line (`python -m monai.bundle run ...`) and must end with exit code 1, exactly one line on
stderr, `error: <file or option>: <problem>`, no traceback, and the output folder empty or as it
was before.

The cases run in children forked from one process that has imported torch and MONAI once
(tests/forked_cli.py: the same `monai.bundle` entry point, ~0.5 s a case instead of ~8 s); the
slow-marked variant runs every case as its own `python -m monai.bundle` process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, phantom_volume, run_env, small_training_set, write_nifti
from forked_cli import ForkedCLI, Result

INFER = ["run", "--config_file", "configs/inference.yaml"]
INFER_CT = ["run", "--config_file", "configs/inference_ct.yaml"]
INFER_PET = ["run", "--config_file", "configs/inference_pet.yaml"]
INFER_XRAY = ["run", "--config_file", "configs/inference_xray.yaml"]
TRAIN = ["run", "training", "--config_file", "configs/train.yaml", "--max_epochs", "1", "--epoch_length", "1"]


def good(folder: Path, name: str = "a.nii.gz", shape=(40, 48, 4), affine=None, scale=1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_nifti(folder / name, phantom_volume(shape, seed=len(name)) * scale, affine)


def header_edit(path: Path, **fields) -> Path:
    """Rewrite `path` with raw header fields set (what a broken writer produces; nibabel's own
    constructors would refuse or repair them)."""
    img = nib.load(str(path))
    hdr = img.header.copy()
    for key, value in fields.items():
        hdr[key] = value
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), str(path))
    return path


def ct_volume(folder: Path, name="c.nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vol = phantom_volume((48, 48, 2), seed=1) * 10 - 1000.0
    return write_nifti(folder / name, vol.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))


def pet_volume(folder: Path, name="p.nii.gz", sign=1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_nifti(folder / name, sign * phantom_volume((48, 48, 2), seed=2) / 25, np.diag([2.0, 2.0, 2.0, 1.0]))


# --- the cases: (id, builder(tmp) -> (argv, output folder, run options), message regex) -------------
CASES: dict[str, tuple] = {}


def case(name: str, message: str):
    def register(builder):
        CASES[name] = (builder, message)
        return builder
    return register


def infer(tmp: Path, *extra, base=INFER, inputs: Path | None = None, out: Path | None = None):
    inputs = inputs or tmp / "in"
    out = out or tmp / "out"
    return [*base, "--input_dir", str(inputs), "--output_dir", str(out), *extra], out, {}


def option_case(name: str, message: str, option: str, value: str, base=INFER, make=None) -> None:
    """A case of one good input (made by `make`, default an MRI volume) and one bad option."""
    def builder(tmp):
        (make or good)(tmp / "in")
        return infer(tmp, f"--{option}", value, base=base)
    case(name, message)(builder)


# ---- the probe's tracebacks --------------------------------------------------------------------------
@case("1x1x1 volume", r"a\.nii\.gz: slices of 1 x 1 pixels")
def _(tmp):
    (tmp / "in").mkdir()
    write_nifti(tmp / "in" / "a.nii.gz", np.ones((1, 1, 1), np.float32))
    return infer(tmp)


@case("singular affine", r"a\.nii\.gz: the affine is singular")
def _(tmp):
    aff = np.array([[2.0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    good(tmp / "in")
    header_edit(tmp / "in" / "a.nii.gz", srow_x=aff[0], srow_y=aff[1], srow_z=aff[2], sform_code=1, qform_code=0)
    return infer(tmp)


@case("NaN affine", r"a\.nii\.gz: .*(NaN|cannot be read)")
def _(tmp):
    good(tmp / "in")
    header_edit(tmp / "in" / "a.nii.gz", srow_x=[np.nan, 0, 0, 0], sform_code=1, qform_code=0)
    return infer(tmp)


for _value in ("0", "-4", "abc", "nan", "inf"):
    option_case(f"acceleration {_value}", r"acceleration.*(>= 1|number)", "acceleration", _value)

option_case("center_fraction 2", r"center_fraction: must be in \(0, 1\), got 2", "center_fraction", "2")
option_case("center_fraction 0", r"center_fraction: must be in \(0, 1\)", "center_fraction", "0")
option_case("intensity_percentile 150", r"intensity_percentile: must be in \(0, 100\], got 150", "intensity_percentile", "150")
option_case("device cuda without CUDA", r"device: 'cuda' asked for, but this machine has no CUDA GPU", "device", "cuda")
option_case("device tpu", r"device: .*(not a torch device|not supported)", "device", "tpu")


@case("output dir is a file", r"output_dir .*out: exists and is not a folder")
def _(tmp):
    good(tmp / "in")
    (tmp / "out").write_text("not a folder")
    return infer(tmp)


@case("output dir under a file", r"output_dir .*: cannot be created")
def _(tmp):
    good(tmp / "in")
    (tmp / "file").write_text("x")
    return infer(tmp, out=tmp / "file" / "out")


@case("output dir not writable", r"output_dir .*: (cannot write there|cannot be created)")
def _(tmp):
    good(tmp / "in")
    if os.geteuid() == 0:  # root writes through permission bits: sysfs refuses new files even to root
        return infer(tmp, out=Path("/sys/kernel"))
    (tmp / "out").mkdir()
    os.chmod(tmp / "out", 0o555)
    return infer(tmp)


@case("output dir on a read-only filesystem", r"output_dir .*: (cannot write there|cannot be created)")
def _(tmp):
    good(tmp / "in")
    return infer(tmp, out=Path("/proc/self/bundle-out"))  # procfs: no files can be made there


@case("output dir on a full disk (free space)", r"output_dir .*out: 0\.0 MiB free, the outputs need up to")
def _(tmp):
    good(tmp / "in")
    argv, out, _ = infer(tmp)
    return argv, out, {"free_bytes": 0}


@case("output dir on a full disk (writes fail)", r"output_dir .*out: (cannot write there|writing the outputs of a failed) \(File too large\)")
def _(tmp):
    good(tmp / "in")
    argv, out, _ = infer(tmp)
    return argv, out, {"fsize_limit": 8192}  # the probe file fits, the outputs do not


# ---- the probe's silent acceptances --------------------------------------------------------------------
@case("same stem x.nii and x.nii.gz", r"x\.nii(\.gz)?: has the same name as .*x\.nii(\.gz)?")
def _(tmp):
    good(tmp / "in", "x.nii.gz")
    good(tmp / "in", "x.nii")
    return infer(tmp)


@case("CT weights given to the MRI model", r"checkpoint .*model_ct\.pt: .*(ct|CT).*mri")
def _(tmp):
    good(tmp / "in")
    return infer(tmp, "--ckpt_path", str(ROOT / "models" / "model_ct.pt"))


@case("light weights given as standard", r"checkpoint .*model_light\.pt: expected mri standard ResidualUNet .*, found mri "
      r"light ResidualUNet .*; for these weights use --model_variant light")
def _(tmp):
    good(tmp / "in")
    return infer(tmp, "--ckpt_path", str(ROOT / "models" / "model_light.pt"), "--model_variant", "standard")


option_case("acceleration 1000", r"acceleration: 1000 is more than the 48 k-space lines of .*a\.nii\.gz", "acceleration", "1000")
option_case("batch_size 0", r"batch_size: expected a whole number >= 1, got 0", "batch_size", "0")
option_case("intensity_percentile 0", r"intensity_percentile: must be in \(0, 100\], got 0", "intensity_percentile", "0")


def raw_pixdim(path: Path, value: float) -> Path:
    """Set pixdim[1] in the file's bytes (nibabel's writer would repair it)."""
    import gzip
    import struct

    data = bytearray(gzip.decompress(path.read_bytes()))
    data[80:84] = struct.pack("<f", value)  # pixdim[1] of a little-endian NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(data)))
    return path


@case("zero voxel size", r"a\.nii\.gz: voxel sizes must be positive, got \(0\.0, 2\.0, 3\.0\)")
def _(tmp):
    raw_pixdim(good(tmp / "in"), 0.0)
    return infer(tmp)


@case("negative voxel size", r"a\.nii\.gz: voxel sizes must be positive, got \(-2\.0, 2\.0, 3\.0\)")
def _(tmp):
    raw_pixdim(good(tmp / "in"), -2.0)
    return infer(tmp)


@case("CT hu_window reversed", r"hu_window: low must be below high, got \[3071, -1024\]")
def _(tmp):
    ct_volume(tmp / "in")
    return infer(tmp, "--hu_window", "[3071,-1024]", base=INFER_CT)


@case("voxel values of 1e30", r"a\.nii\.gz: voxel values up to 1\.\d+e\+30, beyond any scanner's range")
def _(tmp):
    good(tmp / "in", scale=1e28)
    return infer(tmp)


@case("good volume then singular affine", r"b\.nii\.gz: the affine is singular")
def _(tmp):
    good(tmp / "in", "a.nii.gz")
    good(tmp / "in", "b.nii.gz", affine=np.array([[2.0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]))
    return infer(tmp)


@case("rerun into earlier results", r"output_dir .*out: holds earlier results that this run would replace \(a_mask")
def _(tmp):
    good(tmp / "in")
    (tmp / "out").mkdir()
    for name in ("a_recon", "a_zero_filled", "a_mask"):
        write_nifti(tmp / "out" / f"{name}.nii.gz", np.zeros((4, 4, 4), np.float32))
    return infer(tmp)


# ---- more of our own -------------------------------------------------------------------------------------
case("input_dir missing", r"input_dir .*nowhere: no such directory")(lambda tmp: infer(tmp, inputs=tmp / "nowhere"))
case("input_dir empty", r"input_dir .*in: no inputs")(lambda tmp: ((tmp / "in").mkdir(), infer(tmp))[1])


@case("corrupt NIfTI", r"a\.nii\.gz: cannot be read as NIfTI")
def _(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "a.nii.gz").write_bytes(os.urandom(2000))
    return infer(tmp)


@case("4D volume", r"a\.nii\.gz: expected a 3D volume, got shape \(16, 16, 8, 2\)")
def _(tmp):
    (tmp / "in").mkdir()
    write_nifti(tmp / "in" / "a.nii.gz", np.ones((16, 16, 8, 2), np.float32))
    return infer(tmp)


@case("NaN voxels", r"a\.nii\.gz: contains NaN or infinite voxels")
def _(tmp):
    (tmp / "in").mkdir()
    vol = phantom_volume((40, 48, 4))
    vol[1, 2, 3] = np.nan
    write_nifti(tmp / "in" / "a.nii.gz", vol)
    return infer(tmp)


option_case("unknown mask_type", r"unknown mask_type 'radial'", "mask_type", "radial")
option_case("amp not a boolean", r"amp must be true or false, got 'perhaps'", "amp", "perhaps")
option_case("overwrite not a boolean", r"overwrite must be true or false", "overwrite", "sure")
option_case("seed negative", r"seed: expected a whole number >= 0, got -1", "seed", "-1")
option_case("features of the wrong length", r"features: expected six whole numbers >= 1 \(BasicUNet's\), got \[1, 2\]", "features", "[1,2]")
option_case("dropout 2", r"dropout: expected a probability in \[0, 1\), got 2", "dropout", "2")
option_case("unknown norm", r"norm: 'sideways' is not a normalisation MONAI knows", "norm", "sideways")
option_case("slice_axis unknown", r"unknown slice_axis 'foo'", "slice_axis", "foo")
case("checkpoint missing", r"checkpoint .*none\.pt: file not found")(lambda tmp: (good(tmp / "in"), infer(tmp, "--ckpt_path", str(tmp / "none.pt")))[1])


@case("checkpoint is a malicious pickle", r"checkpoint .*evil\.pt: corrupt or not a PyTorch checkpoint")
def _(tmp):
    good(tmp / "in")
    (tmp / "evil.pt").write_bytes(_malicious_pickle(tmp / "pwned"))
    return infer(tmp, "--ckpt_path", str(tmp / "evil.pt"))


def _malicious_pickle(marker: Path) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


option_case("CT views 1", r"views: expected a whole number >= 2, got 1", "views", "1", base=INFER_CT, make=ct_volume)
option_case("CT incident_photons negative", r"incident_photons: must be > 0", "incident_photons", "-5", base=INFER_CT, make=ct_volume)
option_case("CT hu_window one value", r"hu_window: expected \[low, high\]", "hu_window", "[0]", base=INFER_CT, make=ct_volume)
option_case("PET count_fraction 0", r"count_fraction: must be > 0, got 0", "count_fraction", "0", base=INFER_PET, make=pet_volume)
option_case("PET count_fraction negative", r"count_fraction: must be > 0, got -0\.1", "count_fraction", "-0.1", base=INFER_PET, make=pet_volume)
case("PET negative activity", r"p\.nii\.gz: .*negative")(lambda tmp: (pet_volume(tmp / "in", sign=-1.0), infer(tmp, base=INFER_PET))[1])


@case("PET mu-map of another shape", r"p_mu\.nii\.gz: .*shape")
def _(tmp):
    pet_volume(tmp / "in")
    write_nifti(tmp / "in" / "p_mu.nii.gz", np.full((40, 48, 2), 0.0096, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    return infer(tmp, base=INFER_PET)


@case("PET sinogram is a pickle", r"p_sinogram\.npy: ")
def _(tmp):
    pet_volume(tmp / "in")

    np.save(tmp / "in" / "p_sinogram.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return infer(tmp, base=INFER_PET)


@case("list-mode file of an unknown format", r"\.l(\.hdr)?: ")
def _(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "scan.l.hdr").write_text("!INTERFILE :=\nnot a known scanner := yes\n")
    (tmp / "in" / "scan.l").write_bytes(os.urandom(64))
    return infer(tmp, base=INFER_PET)


option_case("X-ray incident_photons 0", r"incident_photons: must be > 0, got 0", "incident_photons", "0", base=INFER_XRAY)


def _train(tmp, *extra):
    data = small_training_set(tmp / "data")
    out = tmp / "ckpt"
    return [*TRAIN, *data, "--ckpt_dir", str(out), "--output_dir", str(out), *extra], out, {}


case("training batch_size 0", r"batch_size: expected a whole number >= 1, got 0")(lambda tmp: _train(tmp, "--batch_size", "0"))
case("training learning_rate negative", r"learning_rate: must be > 0, got -0\.001")(
    lambda tmp: _train(tmp, "--learning_rate", "-0.001"))
case("training max_epochs 0", r"max_epochs: expected a whole number >= 1, got 0")(lambda tmp: _train(tmp, "--max_epochs", "0"))
case("training accelerations below 1", r"acceleration.*>= 1, got 0\.5")(
    lambda tmp: _train(tmp, "--accelerations", "[4,0.5]"))
@case("multi-coil training simulated_maps misspelt", r"simulated_maps: expected one of espirit, true, got 'ture'")
def _(tmp):
    argv, out, options = _train(tmp, "--simulated_maps", "ture")
    i = argv.index("--config_file")
    argv[i + 1] = "['configs/train.yaml','configs/train_multicoil.yaml']"
    return argv, out, options


case("training resume with nothing to resume", r"resume: no last_checkpoint_\*\.pt in .*ckpt")(
    lambda tmp: _train(tmp, "--resume", "true"))
@case("training resume from a malicious pickle", r"checkpoint .*last_checkpoint_epoch=1\.pt: corrupt or not a PyTorch")
def _(tmp):
    argv, out, options = _train(tmp, "--resume", "true")
    out.mkdir()
    (out / "last_checkpoint_epoch=1.pt").write_bytes(_malicious_pickle(tmp / "pwned"))
    return argv, out, options


case("training device cuda without CUDA", r"device: 'cuda' asked for")(lambda tmp: _train(tmp, "--device", "cuda"))


def snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    if not folder.is_dir():
        return {"file": folder.read_bytes()}
    try:
        return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
    except OSError:
        return {"unreadable": True}


def check_case(run, tmp_path: Path, name: str) -> None:
    builder, message = CASES[name]
    if name == "output dir not writable" and os.geteuid() == 0 and not Path("/sys/kernel").is_dir():
        pytest.skip("root here, and no sysfs to stand for an unwritable folder")
    argv, out, options = builder(tmp_path)
    before = snapshot(out)
    res = run(argv, **options)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert re.search(message, errors[0]), errors[0]
    # the line is all there is on stderr, besides MONAI's start-up notices, log lines and progress bars
    others = [line for line in lines[:-1]
              if not re.match(r"(parsing config_file|\d{4}-\d\d-\d\d .* - (INFO|WARNING) - |[\w ]+: +\d+%\|)", line)]
    assert not others, others
    after = snapshot(out)
    assert after == before or (before is None and after == {}), (before, after)
    assert not (tmp_path / "pwned").exists()  # no code ran from a pickle


@pytest.fixture(scope="module")
def forked():
    cli = ForkedCLI(env=run_env())
    yield cli
    cli.close()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_line_and_writes_nothing(forked, tmp_path, name):
    check_case(forked.run, tmp_path, name)


def _subprocess(argv, fsize_limit=None, free_bytes=None) -> Result:
    if fsize_limit or free_bytes is not None:
        pytest.skip("resource limits and free-space figures are set in forked children only")
    res = subprocess.run([sys.executable, "-m", "monai.bundle", *argv], cwd=ROOT, env=run_env(), capture_output=True,
                         text=True, timeout=300)
    return Result(res.returncode, res.stdout, res.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_in_its_own_process(tmp_path, name):
    check_case(_subprocess, tmp_path, name)


def test_the_table_holds_every_case_of_the_probe():
    assert len(CASES) >= 40
    probe = ["1x1x1 volume", "singular affine", "NaN affine", "acceleration 0", "acceleration -4", "acceleration abc",
             "acceleration nan", "center_fraction 2", "intensity_percentile 150", "device cuda without CUDA",
             "output dir is a file", "output dir under a file", "output dir not writable",
             "output dir on a read-only filesystem", "output dir on a full disk (free space)",
             "output dir on a full disk (writes fail)", "same stem x.nii and x.nii.gz", "CT weights given to the MRI model",
             "acceleration 1000", "batch_size 0", "intensity_percentile 0", "zero voxel size", "negative voxel size",
             "CT hu_window reversed", "voxel values of 1e30", "good volume then singular affine",
             "rerun into earlier results", "checkpoint is a malicious pickle"]
    assert not [p for p in probe if p not in CASES]


def test_a_good_run_still_works_in_a_forked_child(forked, tmp_path):
    """The harness itself: the same command with good input writes the outputs (so the cases above
    fail for their input, not for the harness)."""
    good(tmp_path / "in")
    res = forked.run([*INFER, "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["a_mask.nii.gz", "a_recon.nii.gz", "a_zero_filled.nii.gz"]
    shutil.rmtree(tmp_path / "out")
