"""Dependable training runs: atomic checkpoints, resuming from the last one, and a stop on a
non-finite loss. Ignite handlers used by configs/train.yaml.

MONAI's `CheckpointSaver` writes in place (ignite's `DiskSaver(atomic=False)`), and ignite's
`Checkpoint` removes the superseded file *before* it writes the new one: a kill in between leaves
no checkpoint at all (and no `model.pt` while it is being replaced). `AtomicCheckpointSaver` gives
its checkpoints a `KeepUntilReplaced` save handler: each file is written to a `.tmp-*` file beside
it, flushed to disk and renamed into place, and the files it supersedes are removed only after
that. A complete, loadable checkpoint exists at every moment.

`ResumeFromCheckpoint` restores the run (model, optimizer, schedule, trainer, AMP scaler, the best
validation score so far) and states what happens to options given again on resume; MONAI's
`CheckpointLoader` raises torch's own errors on a missing or corrupt file, this one names the file.
`ScalerState` makes the AMP scaler (which MONAI's trainer creates inside `run()`) a checkpoint entry.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Mapping

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from bundle.data.io import atomic_output, remove_leftovers
from bundle.errors import InputError, RunError
from bundle.networks import metadata_of, safe_load, with_metadata

logger = logging.getLogger(__name__)


class KeepUntilReplaced(DiskSaver):
    """ignite's `DiskSaver` with the order made safe: write to a temporary file beside the target,
    flush it to disk, rename it over the target, and only then remove the files that `Checkpoint`
    asked to remove (ignite asks before it saves). Files keep the usual permissions (0666 less
    the umask)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename  # a fixed name (MONAI's key_metric_filename, e.g. model.pt)
        self.pending: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        filename = self.filename or filename
        meta = metadata_of(checkpoint)
        if isinstance(meta, dict) and isinstance(meta.get("score"), dict) and metadata and metadata.get("score_name"):
            meta["score"] = {k: float(metadata["priority"]) for k in meta["score"]}  # the key metric it was saved for
            checkpoint = with_metadata(checkpoint, meta)
        with atomic_output(os.path.join(self.dirname, filename), ".pt") as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so the new name never points at nothing
        _fsync_dir(str(self.dirname))
        for old in self.pending:
            if old != filename and os.path.exists(os.path.join(self.dirname, old)):
                os.remove(os.path.join(self.dirname, old))
        self.pending = []

    def remove(self, filename: str) -> None:
        self.pending.append(self.filename or filename)  # removed once the next file is in place


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's `CheckpointSaver` (same arguments) whose files are written atomically, and whose
    superseded files are removed only after their successor is in place (`KeepUntilReplaced`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)  # MONAI's _DiskSaver keeps it here
                checkpoint.save_handler = KeepUntilReplaced(self.save_dir, fixed)

    @property
    def best(self) -> Checkpoint | None:
        """The best-model checkpoint (its `state_dict` holds the best score and file)."""
        return self._key_metric_checkpoint


class BestScore:
    """The best validation score so far, as a resumable-checkpoint entry: the state of the
    best-model saver (`AtomicCheckpointSaver(save_key_metric=True)`), so that a resumed run
    replaces `model.pt` only with a better model."""

    def __init__(self, saver: AtomicCheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict:
        best = self.saver.best
        return {"saved": [(float(p), f) for p, f in best._saved]} if best is not None else {"saved": []}

    def load_state_dict(self, state: dict) -> None:
        best = self.saver.best
        if best is not None:
            best._saved = [Checkpoint.Item(float(p), str(f)) for p, f in state.get("saved", [])]

    def raise_to(self, score: float, filename: str) -> None:
        """Make `score` (of the model in `filename`) the best so far if it is better."""
        best = self.saver.best
        if best is not None and (not best._saved or score > best._saved[-1].priority):
            best._saved = [Checkpoint.Item(float(score), filename)]

    @property
    def score(self) -> float | None:
        best = self.saver.best
        return float(best._saved[-1].priority) if best is not None and best._saved else None


class RunSettings:
    """The options of a run that a resume must not change silently (a resumable-checkpoint
    entry): the learning rate and max_epochs it was started with."""

    def __init__(self, learning_rate: float, max_epochs: int) -> None:
        self.learning_rate, self.max_epochs = float(learning_rate), int(max_epochs)
        self.loaded: dict | None = None

    def state_dict(self) -> dict:
        return {"learning_rate": self.learning_rate, "max_epochs": self.max_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = dict(state)


class SavedModel:
    """The best model as it is saved: its state dict, carrying what the weights are
    (`bundle.networks.with_metadata`), as the one entry of the best-model saver's `save_dict` (so
    MONAI keeps its `key_metric_filename`, model.pt, and the file stays a plain state dict).
    The metadata (modality, architecture, acquisition, normalisation, bundle version) is checked
    by `bundle.networks.load_checkpoint`; it also holds the validation score the model was saved
    with (filled in when it is saved).

    Args:
        network: the network whose weights are saved (a DDP wrapper is unwrapped).
        info: the metadata (configs/train.yaml `weights_info`).
        metric: the key metric's name.
    """

    def __init__(self, network: torch.nn.Module, info: Mapping, metric: str = "val_ssim") -> None:
        self.network = getattr(network, "module", network)
        self.info, self.metric = dict(info), metric

    def metadata(self) -> dict:
        # the score is filled in by KeepUntilReplaced from the priority ignite saves it with
        return {**self.info, "score": {self.metric: None}}

    def state_dict(self) -> dict:
        return with_metadata(self.network.state_dict(), self.metadata())

    def load_state_dict(self, state: Mapping) -> None:
        self.network.load_state_dict(state)


def bundle_version(bundle_root: str) -> str:
    """The bundle's version (configs/metadata.json), stored in the weights' metadata."""
    import json

    try:
        with open(os.path.join(bundle_root, "configs", "metadata.json")) as f:
            return str(json.load(f)["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def checkpoint_iteration(path: str) -> int:
    """The trainer iteration stored in a resumable checkpoint (for the log and the tests)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state["trainer"]["iteration"])


def latest_checkpoint(ckpt_dir: str, prefix: str = "last") -> str | None:
    """The newest `<prefix>_checkpoint_*.pt` in `ckpt_dir` (by modification time: epoch- and
    iteration-level files can sit side by side), or None."""
    files = glob.glob(os.path.join(glob.escape(ckpt_dir), f"{glob.escape(prefix)}_checkpoint_*.pt"))
    return max(files, key=os.path.getmtime) if files else None


OPTIONAL_ENTRIES = ("best", "settings")  # resumable checkpoints of earlier versions lack them


class ResumeFromCheckpoint:
    """Load model, optimizer, scheduler, trainer (epoch and iteration), AMP scaler, the best score
    and the run's settings from the newest resumable checkpoint when the trainer starts.

    Options given again with `--resume true`:
    - `learning_rate`: a resumed run keeps its optimizer state and schedule, so a different one is
      refused (start a new run with `--pretrained` to change it);
    - `max_epochs`: a larger one extends the run; the cosine schedule then anneals from the current
      learning rate down to its floor over the added epochs (it never climbs back up); a smaller
      one than the epoch reached is refused.
    The best score comes from the checkpoint and from `model.pt`'s own metadata (whichever is
    better), so the first validation after resuming does not replace a better model.

    Args:
        ckpt_dir: where `CheckpointSaver` wrote `<prefix>_checkpoint_*.pt`.
        prefix: the checkpoints' file prefix (`last_prefix` in the configs).
        load_dict: the objects to restore, by the names they were saved under (the scaler as a
            `ScalerState`, the best score as a `BestScore`, the settings as `RunSettings`).
        enabled: False only removes temporary files left by a killed run (so the config can
            always build it).
        path: a specific checkpoint instead of the newest one.
        model_file: the best model's file in `ckpt_dir` (its metadata holds its score).
        saver: the resumable checkpoints' saver: older resumable checkpoints left beside the one
            resumed from (by a kill between a save and its clean-up) go once its next file is in place.
    """

    def __init__(self, ckpt_dir: str, prefix: str, load_dict: Mapping[str, object], enabled: bool = True,
                 path: str | None = None, model_file: str | None = None,
                 saver: AtomicCheckpointSaver | None = None) -> None:
        self.ckpt_dir, self.prefix, self.enabled = ckpt_dir, prefix, bool(enabled)
        self.load_dict = dict(load_dict)
        self.path = path
        self.model_file = model_file
        self.saver = saver

    def attach(self, engine: Engine) -> None:
        remove_leftovers(self.ckpt_dir, logger)
        if not self.enabled:
            return
        self.path, self.state = resumable_state(self.ckpt_dir, self.prefix, self.path)
        path = self.path
        missing = [k for k in self.load_dict if k not in self.state and k not in OPTIONAL_ENTRIES]
        if missing:
            raise InputError(f"checkpoint {path}: not a resumable checkpoint (no {', '.join(missing)})")
        settings = self.state.get("settings")
        wanted = self.load_dict.get("settings")
        if isinstance(settings, dict) and isinstance(wanted, RunSettings):
            old = float(settings.get("learning_rate", wanted.learning_rate))
            if not math.isclose(old, wanted.learning_rate, rel_tol=1e-9):
                raise InputError(f"learning_rate: {wanted.learning_rate:g} given, but the run in {path} was started "
                                 f"with {old:g}; a resumed run keeps its optimizer and schedule (start a new run with "
                                 f"--pretrained {path} to train on at another rate)")
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        max_epochs = engine.state.max_epochs
        to_load = {k: v for k, v in self.load_dict.items() if k in self.state}
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=self.state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise InputError(f"checkpoint {self.path}: does not match this configuration ({str(e).splitlines()[0][:160]})") from None
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise InputError(f"max_epochs: {max_epochs} given, but the run in {self.path} has already reached epoch "
                             f"{engine.state.epoch}")
        settings = self.load_dict.get("settings")
        before = (settings.loaded or {}).get("max_epochs") if isinstance(settings, RunSettings) else None
        scheduler = self.load_dict.get("lr_scheduler")
        optimizer = self.load_dict.get("optimizer")
        t_max = getattr(scheduler, "T_max", None)
        if max_epochs is not None and t_max is not None and optimizer is not None and \
                max_epochs - engine.state.epoch != t_max - getattr(scheduler, "last_epoch", 0):
            # the remaining epochs changed: anneal from the current rate to the floor over them
            lrs = [group["lr"] for group in optimizer.param_groups]  # type: ignore[attr-defined]
            for group, lr in zip(optimizer.param_groups, lrs):  # type: ignore[attr-defined]
                group["initial_lr"] = lr
            scheduler.base_lrs = lrs  # type: ignore[attr-defined]
            scheduler.T_max = max(1, max_epochs - engine.state.epoch)  # type: ignore[attr-defined]
            scheduler.last_epoch = 0  # type: ignore[attr-defined]
            logger.info("max_epochs %s (was %s): the learning rate anneals from %.3g over the remaining %d epochs",
                        max_epochs, before, lrs[0], scheduler.T_max)  # type: ignore[attr-defined]
        if isinstance(settings, RunSettings):
            settings.max_epochs = int(max_epochs or settings.max_epochs)
        handler = getattr(getattr(self.saver, "_interval_checkpoint", None), "save_handler", None)
        if isinstance(handler, KeepUntilReplaced):
            others = glob.glob(os.path.join(glob.escape(self.ckpt_dir), f"{glob.escape(self.prefix)}_checkpoint_*.pt"))
            handler.pending += [os.path.basename(f) for f in others]  # the one resumed from, too: superseded
        engine.state.max_epochs = max_epochs  # a larger --max_epochs extends the run
        best = self.load_dict.get("best")
        if isinstance(best, BestScore) and self.model_file:
            model_path = os.path.join(self.ckpt_dir, self.model_file)
            score = saved_score(model_path)
            if score is not None:
                best.raise_to(score, self.model_file)
        logger.info("resumed from %s at epoch %d, iteration %d%s", self.path, engine.state.epoch, engine.state.iteration,
                    f"; best validation score so far {best.score:.4f}" if isinstance(best, BestScore) and
                    best.score is not None else "")


def check_resume(resume, ckpt_dir: str, prefix: str) -> None:
    """Before anything runs: with resume on, a checkpoint to resume from must exist and load as
    tensors and plain containers (`weights_only`: a pickle that would run code is refused here)."""
    from bundle.errors import as_bool

    if as_bool(resume, "resume"):
        resumable_state(ckpt_dir, prefix)


def resumable_state(ckpt_dir: str, prefix: str, path: str | None = None) -> tuple[str, dict]:
    """The checkpoint to resume from (`path`, else the newest `<prefix>_checkpoint_*.pt` in
    `ckpt_dir`) and its content, loaded `weights_only`; an `InputError` if there is none or it
    is not a dict of entries."""
    path = path or latest_checkpoint(ckpt_dir, prefix)
    if path is None:
        raise InputError(f"resume: no {prefix}_checkpoint_*.pt in {ckpt_dir} to resume from")
    state = safe_load(path)
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path}: not a resumable checkpoint")
    return path, state


def saved_score(path: str) -> float | None:
    """The validation score stored in a model file's metadata (None if it has none)."""
    if not os.path.isfile(path):
        return None
    try:
        state = safe_load(path)
    except InputError:
        return None
    meta = metadata_of(state)
    score = meta.get("score") if isinstance(meta, dict) else None
    return float(next(iter(score.values()))) if isinstance(score, dict) and score else None




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


FIRST_CONV = "unets.0.conv_0.conv_0.conv.weight"  # a ResidualUNet's first convolution: (features, in_channels, 3, 3)


def add_guide_channels(src: str, out: str, guide_channels: int = 1) -> None:
    """Write to `out` the ResidualUNet weights at `src` with `guide_channels` more input channels
    (`ResidualUNet(guide_channels=...)`) of zero weight: the network then gives the same output
    whatever the guide, so fine-tuning it (the MR-guided PET model) starts where `src` ends.
    Written atomically, the metadata's architecture updated."""
    if not 1 <= int(guide_channels) <= 8:
        raise InputError(f"guide_channels must be in [1, 8], got {guide_channels!r}")
    if not os.path.isfile(src):
        raise InputError(f"checkpoint {src}: file not found")
    state = safe_load(src)
    if not isinstance(state, Mapping) or FIRST_CONV not in state:
        raise InputError(f"checkpoint {src}: not the weights of a single-cascade ResidualUNet (no {FIRST_CONV})")
    meta = dict(metadata_of(state) or {})
    arch = dict(meta.get("architecture") or {})
    if int(arch.get("guide_channels", 0)):
        raise InputError(f"checkpoint {src}: already has {arch['guide_channels']} guide channel(s)")
    state = dict(state)
    w = state[FIRST_CONV]
    state[FIRST_CONV] = torch.cat([w, w.new_zeros(w.shape[0], int(guide_channels), *w.shape[2:])], 1)
    meta["architecture"] = {**arch, "guide_channels": int(guide_channels)}
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"{out}: its folder does not exist")
    with atomic_output(out, ".pt") as tmp:
        torch.save(with_metadata(state, meta), tmp)
