"""Checkpoints you can trust: a complete, loadable checkpoint (and model.pt, once written) exists at
every moment of a run; SIGKILLs at random moments never leave a run that cannot resume; a resumed
run never replaces a better model.pt; options given again on resume apply as documented or are
refused in one line.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import run_env, small_training_set
from forked_cli import ForkedCLI

from bundle import checkpoints
from bundle.checkpoints import AtomicCheckpointSaver, BestScore, RunSettings, SavedModel
from bundle.networks import metadata_of, with_metadata

TRAIN = ["run", "training", "--meta_file", "configs/metadata.json", "--config_file", "configs/train.yaml",
         "--logging_file", "configs/logging.conf", "--batch_size", "2", "--patch_size", "[32,32]",
         "--features", "[4,4,8,8,16,4]"]


def loadable(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and len(state) > 0


def test_a_complete_checkpoint_exists_at_every_moment(tmp_path, monkeypatch):
    """Record the folder at every file-system step of the savers (each rename and removal) of a
    6-epoch run that saves a resumable checkpoint per epoch and model.pt whenever the score
    improves: a loadable resumable checkpoint and model.pt are there throughout."""
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(3, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    best_saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": SavedModel(net, {"modality": "x"})},
                                       save_key_metric=True, key_metric_filename="model.pt", key_metric_name="score")
    resumable = {"model": net, "optimizer": opt, "best": BestScore(best_saver), "settings": RunSettings(0.1, 6)}
    last_saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=resumable, save_interval=1, n_saved=1,
                                       file_prefix="last")
    scores = iter([0.1, 0.3, 0.2, 0.5, 0.4, 0.6])

    @engine.on(Events.EPOCH_COMPLETED)
    def score(e):
        e.state.metrics["score"] = next(scores)
    best_saver.attach(engine)
    last_saver.attach(engine)

    moments: list[list[str]] = []
    seen: set[str] = set()

    def check_now():
        names = sorted(os.listdir(tmp_path))
        moments.append(names)
        lasts = [n for n in names if n.startswith("last_checkpoint_")]
        if "last" in seen:  # once the first resumable checkpoint is in place, one always is
            assert any(loadable(tmp_path / n) for n in lasts), names
        if "model" in seen:
            assert loadable(tmp_path / "model.pt"), names
        seen.update(["last"] if lasts else [])
        seen.update(["model"] if "model.pt" in names else [])

    real_replace, real_remove = os.replace, os.remove

    def replace(a, b):
        check_now()
        real_replace(a, b)
        check_now()

    def remove(p):
        check_now()
        real_remove(p)
        check_now()

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    monkeypatch.setattr(checkpoints.os, "remove", remove)
    engine.run([0], max_epochs=6)
    assert len(moments) >= 20
    final = sorted(os.listdir(tmp_path))
    assert final == ["last_checkpoint_epoch=6.pt", "model.pt"], final
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert metadata_of(state)["score"] == {"val_ssim": 0.6}
    resumed = torch.load(tmp_path / "last_checkpoint_epoch=6.pt", weights_only=True)
    assert max(p for p, _ in resumed["best"]["saved"]) == 0.6


def kill_and_resume_cycles(tmp_path: Path, kills: int, seed: int) -> list[str]:
    """Start a short training, SIGKILL it at a random moment, resume it, kill again... then let the
    last resume finish. Every resume after a checkpoint was saved must work, and a finished run
    leaves a loadable model.pt and no temporary file."""
    rng = random.Random(seed)
    data = small_training_set(tmp_path / "data")
    ckpt = tmp_path / "models"
    common = [*TRAIN, *data, "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path / "eval"), "--max_epochs", "150",
              "--epoch_length", "2", "--checkpoint_interval", "1"]
    cli = ForkedCLI(env=run_env())
    log = []
    try:
        saved_once = False
        for k in range(kills):
            resume = ["--resume", "true"] if saved_once else []
            out, err = str(tmp_path / f"out{k}.txt"), str(tmp_path / f"err{k}.txt")
            pid = cli.start([*common, *resume], out, err)
            time.sleep(rng.uniform(1.0, 4.0))
            os.kill(pid, signal.SIGKILL)
            rc = cli.wait(pid)
            text = Path(out).read_text() + Path(err).read_text()
            if resume:
                assert "error:" not in text, text[-2000:]  # the resume itself started
            files = sorted(os.listdir(ckpt)) if ckpt.exists() else []
            log.append(f"kill {k}: rc {rc}, folder {files}")
            # once a resumable checkpoint has been complete, one always is (the log may be lost
            # with the process: its buffered output dies with it)
            complete = any(loadable(ckpt / f) for f in files if f.startswith("last_checkpoint_"))
            assert complete or not saved_once, log[-1]
            saved_once = saved_once or complete
        res = cli.run([*common, "--resume", "true"] if saved_once else common)
        assert res.returncode == 0, res.stderr[-3000:]
        files = sorted(os.listdir(ckpt))
        assert not [f for f in files if f.startswith(".tmp-")], files  # leftovers of the kills are gone
        assert loadable(ckpt / "model.pt")
        assert [f for f in files if f.startswith("last_checkpoint_")] == ["last_checkpoint_iteration=300.pt"], files
    finally:
        cli.close()
    return log


def test_sigkill_at_random_moments_then_resume(tmp_path):
    kill_and_resume_cycles(tmp_path, kills=3, seed=int(os.environ.get("BUNDLE_KILL_SEED", "0")))


@pytest.mark.slow
def test_sigkill_at_random_moments_ten_times(tmp_path):
    print("\n".join(kill_and_resume_cycles(tmp_path, kills=10, seed=int(time.time()))))


def test_resume_keeps_the_better_model_and_refuses_another_learning_rate(tmp_path):
    data = small_training_set(tmp_path / "data")
    ckpt = tmp_path / "models"
    common = [*TRAIN, *data, "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path / "eval"), "--epoch_length", "2"]
    cli = ForkedCLI(env=run_env())
    try:
        assert cli.run([*common, "--max_epochs", "2"]).returncode == 0
        # model.pt made better than anything this tiny run can reach: resuming must keep it
        state = torch.load(ckpt / "model.pt", weights_only=True)
        torch.save(with_metadata(state, {**metadata_of(state), "score": {"val_ssim": 0.99}}), ckpt / "model.pt")
        before = (ckpt / "model.pt").read_bytes()
        res = cli.run([*common, "--max_epochs", "4", "--resume", "true"])
        assert res.returncode == 0, res.stderr[-2000:]
        assert "best validation score so far 0.9900" in res.stdout + res.stderr
        assert (ckpt / "model.pt").read_bytes() == before
        # extending the run: the learning rate anneals down from where it was, never back up
        lrs = [float(x) for x in re.findall(r"Current learning rate: ([0-9.e-]+)", res.stdout + res.stderr)]
        assert lrs and all(b <= a * (1 + 1e-6) for a, b in zip(lrs, lrs[1:])), lrs
        assert sorted(f for f in os.listdir(ckpt) if f.startswith("last_")) == ["last_checkpoint_epoch=4.pt"]
        res = cli.run([*common, "--max_epochs", "6", "--resume", "true", "--learning_rate", "0.01"])
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1].startswith("error: learning_rate: 0.01 given, but the run in ")
        res = cli.run([*common, "--max_epochs", "3", "--resume", "true"])
        assert res.returncode == 1
        assert "error: max_epochs: 3 given, but the run in " in res.stderr.strip().splitlines()[-1]
    finally:
        cli.close()
