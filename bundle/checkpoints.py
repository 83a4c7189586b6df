"""Dependable training runs: atomic checkpoints, resuming from the last one, and a stop on a
non-finite loss. Ignite handlers used by configs/train.yaml.

MONAI's `CheckpointSaver` writes in place (ignite's `DiskSaver(atomic=False)`), so a crash while
saving can leave a truncated `model.pt`; `AtomicCheckpointSaver` switches its savers to ignite's
atomic mode (temporary file in the same folder, then rename). MONAI's `CheckpointLoader` raises
torch's own errors on a missing or corrupt file; `ResumeFromCheckpoint` names the file, and
`ScalerState` makes the AMP scaler (which MONAI's trainer creates inside `run()`) a checkpoint entry.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

from bundle.errors import InputError, RunError

logger = logging.getLogger(__name__)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's `CheckpointSaver` (same arguments) whose files are written to a temporary file
    beside the target and renamed, so an interrupted save never leaves a truncated checkpoint."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                # ignite's DiskSaver option (MONAI turns it off only to keep group/other read
                # permission, which ignite's atomic mode restores after the rename)
                checkpoint.save_handler._atomic = True


def checkpoint_iteration(path: str) -> int:
    """The trainer iteration stored in a resumable checkpoint (for the log and the tests)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state["trainer"]["iteration"])


def latest_checkpoint(ckpt_dir: str, prefix: str = "last") -> str | None:
    """The newest `<prefix>_checkpoint_*.pt` in `ckpt_dir` (by modification time: epoch- and
    iteration-level files can sit side by side), or None."""
    files = glob.glob(os.path.join(glob.escape(ckpt_dir), f"{glob.escape(prefix)}_checkpoint_*.pt"))
    return max(files, key=os.path.getmtime) if files else None


class ResumeFromCheckpoint:
    """Load model, optimizer, scheduler, trainer (epoch and iteration) and AMP scaler from the
    newest resumable checkpoint when the trainer starts.

    Args:
        ckpt_dir: where `CheckpointSaver` wrote `<prefix>_checkpoint_*.pt`.
        prefix: the checkpoints' file prefix (`last_prefix` in the configs).
        load_dict: the objects to restore, by the names they were saved under (the scaler as a
            `ScalerState`).
        enabled: False does nothing (so the config can always build it).
        path: a specific checkpoint instead of the newest one.
    """

    def __init__(self, ckpt_dir: str, prefix: str, load_dict: Mapping[str, object], enabled: bool = True,
                 path: str | None = None) -> None:
        self.ckpt_dir, self.prefix, self.enabled = ckpt_dir, prefix, bool(enabled)
        self.load_dict = dict(load_dict)
        self.path = path

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = self.path or latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            raise InputError(f"resume: no {self.prefix}_checkpoint_*.pt in {self.ckpt_dir} to resume from")
        self.path = path
        try:
            self.state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"checkpoint {path}: corrupt or not a PyTorch checkpoint ({type(e).__name__})") from None
        missing = [k for k in self.load_dict if k not in self.state]
        if missing:
            raise InputError(f"checkpoint {path}: not a resumable checkpoint (no {', '.join(missing)})")
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=self.state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise InputError(f"checkpoint {self.path}: does not match this configuration ({str(e).splitlines()[0][:160]})") from None
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise InputError(f"checkpoint {self.path}: already at epoch {engine.state.epoch}, beyond max_epochs {max_epochs}")
        engine.state.max_epochs = max_epochs  # a larger --max_epochs extends the run
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration)


class ScalerState:
    """The trainer's AMP GradScaler as a checkpoint entry (MONAI creates it inside `run()`, after
    the checkpoint handlers are built; an empty state without AMP)."""

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        scaler = getattr(self.trainer, "scaler", None)
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and state:
            scaler.load_state_dict(state)


class StopOnNonFiniteLoss:
    """Stop training with one clear message when the loss is NaN or infinite. Attach it before the
    checkpoint handlers: it raises, so no handler after it saves the diverged model, and the last
    good checkpoints stay as they are."""

    def __init__(self, ckpt_dir: str = "") -> None:
        self.ckpt_dir = ckpt_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            where = f" in {self.ckpt_dir}" if self.ckpt_dir else ""
            raise RunError(
                f"training stopped: the loss is {value} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; the last good checkpoints{where} are kept (lower the learning rate, "
                f"check the data, or resume with --resume true)"
            )
