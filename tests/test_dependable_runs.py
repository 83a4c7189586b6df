"""Dependable training: kill-and-resume, atomic checkpoints, corrupt checkpoints, the NaN guard,
the same validation numbers from the same seed, the AMP switch on CPU."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_bundle, run_env

from bundle.checkpoints import AtomicCheckpointSaver, checkpoint_iteration, latest_checkpoint

TRAIN = ["--meta_file", "configs/metadata.json", "--config_file", "configs/train.yaml", "--logging_file",
         "configs/logging.conf"]


def args(tiny_dataset, tmp_path, **extra):
    out = ["--dataset_dir", tiny_dataset["dataset_dir"], "--datalist", tiny_dataset["datalist"], "--ckpt_dir",
           str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--batch_size", "2", "--patch_size",
           "[32,32]", "--features", "[4,4,8,8,16,4]"]
    for k, v in extra.items():
        out += [f"--{k}", str(v)]
    return out


def val_ssims(text: str) -> list[str]:
    return re.findall(r"val_ssim: ([0-9.]+)", text)


def test_killed_training_resumes_from_the_saved_iteration(tiny_dataset, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", *TRAIN,
           *args(tiny_dataset, tmp_path, max_epochs=3, epoch_length=40, checkpoint_interval=5)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    models = tmp_path / "models"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            found = latest_checkpoint(str(models))
            if found and checkpoint_iteration(found) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # mid-epoch: 40 iterations per epoch, saved every 5
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = checkpoint_iteration(latest_checkpoint(str(models)))
    assert 10 <= saved < 120 and saved % 5 == 0

    res = run_bundle("training", *TRAIN, *args(tiny_dataset, tmp_path, max_epochs=3, epoch_length=40,
                                               checkpoint_interval=5, resume="true"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    m = re.search(r"resumed from \S+ at epoch (\d+), iteration (\d+)", log)
    assert m and int(m.group(2)) == saved, log[-3000:]
    # the resumed run counts on from the saved iteration (epochs of 40) to the end
    first_iter = re.search(r"Epoch: (\d+)/3, Iter: (\d+)/40", log)
    assert (int(first_iter.group(1)) - 1) * 40 + int(first_iter.group(2)) == saved + 1
    assert "Epoch: 3/3, Iter: 40/40" in log
    assert checkpoint_iteration(latest_checkpoint(str(models))) == 120
    state = torch.load(models / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_errors_are_one_line(tiny_dataset, tmp_path):
    from ignite.engine import Engine

    from bundle.checkpoints import ResumeFromCheckpoint
    from bundle.errors import InputError

    with pytest.raises(InputError, match="resume: no last_checkpoint_\\*.pt in"):
        ResumeFromCheckpoint(str(tmp_path / "models"), "last", {"model": torch.nn.Linear(1, 1)}).attach(Engine(lambda e, b: None))
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "last_checkpoint_epoch=1.pt").write_bytes(b"PK\x03\x04 truncated")
    res = run_bundle("training", *TRAIN, *args(tiny_dataset, tmp_path, max_epochs=1, epoch_length=1, resume="true"))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert last.startswith("error: checkpoint ") and "last_checkpoint_epoch=1.pt: corrupt" in last


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    res = run_bundle("training", *TRAIN, *args(tiny_dataset, tmp_path, max_epochs=1, epoch_length=2))
    assert res.returncode == 0, res.stderr[-3000:]
    models = tmp_path / "models"
    before = {p.name: p.read_bytes() for p in models.glob("*.pt")}
    assert "model.pt" in before and "last_checkpoint_epoch=1.pt" in before
    # an absurd learning rate: the first step blows the weights up, the next loss is NaN
    res = run_bundle("training", *TRAIN, *args(tiny_dataset, tmp_path, max_epochs=2, epoch_length=4,
                                               learning_rate="1e30", pretrained=str(models / "model.pt")))
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training stopped: the loss is nan at epoch 1, iteration \d", last), res.stderr[-2000:]
    after = {p.name: p.read_bytes() for p in models.glob("*.pt")}
    assert after == before  # nothing overwritten by the diverged run


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 2)
    objects = {"model": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}  # saved as "<prefix>_checkpoint_..."
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, save_interval=1, n_saved=1,
                                  file_prefix="x")
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    (good,) = tmp_path.glob("x_checkpoint_epoch=1.pt")
    content = good.read_bytes()
    assert oct(good.stat().st_mode)[-3:] in ("644", "664")  # group/others can read, like any output

    real_save = torch.save

    def crash_midway(obj, f, *a, **k):  # writes a few bytes, then the "machine" fails
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    engine2 = Engine(lambda e, b: None)
    saver2 = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, save_interval=1, n_saved=1,
                                   file_prefix="y", epoch_level=True)
    saver2.attach(engine2)
    (tmp_path / "y_checkpoint_epoch=1.pt").write_bytes(content)  # a previous good file under the same name
    with pytest.raises(OSError, match="disk full"):
        engine2.run([0], max_epochs=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "y_checkpoint_epoch=1.pt").read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_checkpoint_epoch=1.pt", "y_checkpoint_epoch=1.pt"]


def _validation_runs(tiny_dataset, tmp_path, amps):
    runs = []
    for i, amp in enumerate(amps):
        res = run_bundle("training", *TRAIN, *args(tiny_dataset, tmp_path / str(i), max_epochs=1, epoch_length=3,
                                                   amp=amp))
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(val_ssims(res.stdout + res.stderr))
    return runs


def test_same_seed_same_validation_numbers(tiny_dataset, tmp_path):
    runs = _validation_runs(tiny_dataset, tmp_path, ("false", "false"))
    assert runs[0] and runs[0] == runs[1]  # same seed: the same validation SSIM, to the last digit


@pytest.mark.slow
def test_amp_switch_on_cpu(tiny_dataset, tmp_path):
    # AMP requested on a CPU: MONAI's trainer autocasts on CUDA only, so the run is the full-precision one
    runs = _validation_runs(tiny_dataset, tmp_path, ("false", "true"))
    assert runs[0] and runs[1] == runs[0]
