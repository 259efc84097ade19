"""Fault-tolerant training: `ResumableCheckpoint` and the run-folder helpers of the `emoverse` CLI.

`ResumableCheckpoint` writes `last.ckpt` every `every_n_train_steps` optimizer steps and at every
epoch end (curriculum stages end at epoch ends), keeps a copy of each epoch end, and on SIGTERM or
SIGINT writes `last.ckpt` at the next batch boundary and stops with `TrainingInterrupted`. Every
write goes to a temporary file that is synced and then renamed over the old one, so a kill during
the write leaves the previous checkpoint whole. So that a resumed run with dropout ends with the
same weights as an uninterrupted one, the global RNGs (torch, CUDA, numpy, random) are re-seeded at
every epoch's first batch from (base seed, epoch, rank), and a mid-epoch checkpoint carries their
state of every rank, restored at the first batch after resuming (exact on every rank).

`claim_version`, `RunFolder` and `find_last_checkpoint` back `emoverse fit --ckpt_path last`, keep
concurrent runs out of each other's `version_N` folder and leave none behind for a start that fails.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

LAST = "last.ckpt"
HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint.

    Attributes:
        signum: the signal received.
        step: the optimizer step the checkpoint holds.
        path: the checkpoint written.
        exit_code: the shell convention for death by that signal, 128 + signum (143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.signum, self.step, self.path = signum, step, path
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {path}; "
                         "resume with --ckpt_path last (or that path)")


class ResumableCheckpoint(Checkpoint):
    """Checkpoints that lose at most `every_n_train_steps` steps, written atomically.

    Files in `dirpath`: `last.ckpt` (the newest state; what `--ckpt_path last` resumes; also
    written when `max_steps` ends the run) and, with `keep_epoch_ends`, `epoch={E}-step={S}.ckpt`
    for every epoch end (each curriculum stage end among them). Mid-epoch checkpoints are saved at a
    training batch end, epoch-end ones in `on_train_epoch_end` (after the epoch's validation): the
    points Lightning resumes exactly from, whatever the next epoch's length.

    Args:
        dirpath: folder of the checkpoints; default `{logger.log_dir}/checkpoints` (or
            `{default_root_dir}/checkpoints` without a logger).
        every_n_train_steps: write `last.ckpt` every this many optimizer steps (0: only at epoch
            ends and on signals).
        keep_epoch_ends: keep a copy of each epoch end's checkpoint.
        handle_signals: on SIGTERM or SIGINT, finish the current batch, write `last.ckpt` and
            raise `TrainingInterrupted` (a second signal acts as usual, e.g. Ctrl-C interrupts at once).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 500, keep_epoch_ends: bool = True,
                 handle_signals: bool = True) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"ResumableCheckpoint: every_n_train_steps={every_n_train_steps}; expected >= 0")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_train_steps, self.keep_epoch_ends = every_n_train_steps, keep_epoch_ends
        self.handle_signals = handle_signals
        self.last_path: Path | None = None
        self.kept: list[Path] = []
        self._saved_step: int | None = None
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._pending_rng: list[dict[str, Any]] | None = None  # every rank's mid-epoch RNG state, restored at the next batch
        self._epoch_end = False  # is a checkpoint being written at an epoch's end?
        self._last_batch = -1  # index of the epoch's last finished batch
        self._base_seed: int | None = None

    # where --------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.dirpath is None:
            base = trainer.logger.log_dir if trainer.logger is not None and trainer.logger.log_dir else trainer.default_root_dir
            self.dirpath = Path(trainer.strategy.broadcast(str(Path(base) / "checkpoints")))

    # signals ------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._signal = None
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum
        self._restore_handlers()  # a second signal is not deferred
        rank_zero_info(f"emoverse: received {signal.Signals(signum).name}; writing a checkpoint after this batch")

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    # when ---------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Between two epochs Lightning draws from the global RNG a varying number of times (DataLoader
        # reloads and iterators; fewer when resuming, which skips the epoch-start hooks), so each epoch
        # starts from its own seed; a mid-epoch resume restores this rank's state saved with the checkpoint.
        if self._pending_rng is not None:
            _set_rng(self._pending_rng[trainer.global_rank])
            self._pending_rng = None
        elif batch_idx == 0:
            if self._base_seed is None:
                self._base_seed = torch.initial_seed()
            _seed_all((self._base_seed * 1_000_003 + trainer.current_epoch * 101 + trainer.global_rank) % 2**63)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last_batch = batch_idx
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # an epoch's last batch: saved in on_train_epoch_end, the point Lightning resumes an epoch end from
        step = trainer.global_step
        # the run ends mid-epoch: max_steps, or a stop decided before this hook (checkpoints' hooks run last)
        final = 0 < trainer.max_steps <= step or trainer.should_stop
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        signalled = self._signalled(trainer)
        interval = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        if not stepped or not (final or interval or signalled):
            return
        if step != self._saved_step:
            self.save(trainer, LAST)
            self._saved_step = step
        if signalled:
            raise TrainingInterrupted(self._signal or signal.SIGTERM, step, self.last_path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation: resumed from here, Lightning starts the next epoch whatever its length
        # (a checkpoint of the last batch's end would count that epoch's batches against the next one's).
        step, signalled = trainer.global_step, self._signalled(trainer)
        if self._last_batch + 1 < trainer.num_training_batches:
            # the epoch was cut short (should_stop, max_steps): resumed from here, Lightning would take it as
            # finished; its batch-end checkpoint (written above) is where it resumes
            if signalled:
                raise TrainingInterrupted(self._signal or signal.SIGTERM, step, self.last_path)
            return
        self._epoch_end = True  # the next epoch re-seeds: no RNG state to keep
        try:
            if self.keep_epoch_ends:  # the kept copy first, so last.ckpt is the newest file
                kept = self.save(trainer, f"epoch={trainer.current_epoch}-step={step}.ckpt")
                self.kept.append(kept)
                self._copy(trainer, kept, LAST)
            else:
                self.save(trainer, LAST)
        finally:
            self._epoch_end = False
        self._saved_step = step
        if signalled:
            raise TrainingInterrupted(self._signal or signal.SIGTERM, step, self.last_path)

    def _signalled(self, trainer: pl.Trainer) -> bool:
        signalled = self._signal is not None
        if trainer.world_size > 1:  # every rank must stop (and save) together
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        return signalled

    # how ----------------------------------------------------------------------------------------

    def save(self, trainer: pl.Trainer, name: str) -> Path:
        """Write a checkpoint of `trainer` to `dirpath/name` atomically (all ranks must call it)."""
        assert self.dirpath is not None, "ResumableCheckpoint.save before setup"
        final = self.dirpath / name
        tmp = final.with_name(f".{final.name}.partial")
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            atomic_replace(tmp, final)
        trainer.strategy.barrier("ResumableCheckpoint.save")
        self.last_path = final
        return final

    def _copy(self, trainer: pl.Trainer, source: Path, name: str) -> None:
        final = source.with_name(name)
        if trainer.is_global_zero:
            tmp = final.with_name(f".{final.name}.partial")
            shutil.copyfile(source, tmp)
            atomic_replace(tmp, final)
        trainer.strategy.barrier("ResumableCheckpoint.copy")
        self.last_path = final

    def state_dict(self) -> dict[str, Any]:
        # every rank's RNG state (all ranks save together), so dropout resumes exactly on each; after an
        # epoch's end the next epoch re-seeds, so only a mid-epoch state is needed
        rng = None
        if not self._epoch_end:
            rng = [_get_rng()]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                rng = [None] * dist.get_world_size()
                dist.all_gather_object(rng, _get_rng())
        return {"saved_step": self._saved_step, "base_seed": self._base_seed, "rng": rng}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rng = state_dict.get("rng")
        if isinstance(rng, dict):
            raise ValueError("this checkpoint predates emoverse's curriculum redesign (it holds one rank's RNG "
                             "state): it cannot be resumed exactly; start a new fit")
        self._saved_step = state_dict.get("saved_step")
        self._base_seed = state_dict.get("base_seed")
        self._pending_rng = rng


def atomic_replace(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it over `final` (a reader sees the old or the new file, never half)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _get_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "random": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # CUDA too
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["random"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """`random.setstate` needs tuples; a checkpoint round trip may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# run folders ------------------------------------------------------------------------------------


def claim_version(root: str | Path) -> int:
    """Create `root/version_N` for the next free N and return N.

    `mkdir` either creates the folder or fails, so two runs started at once never get the same N.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


START_FILES = frozenset({"config.yaml", "hparams.yaml"})
"""What a run writes into its folder before it has a result (LightningCLI's config, the logger's hparams)."""


class RunFolder:
    """The `version_N` folder of one `emoverse` run: claimed on rank 0 only, given back by a start that fails.

    `claim` reserves the folder with `claim_version` (an atomic mkdir, so runs started at once never share
    one) on global rank 0; other ranks of a DDP run claim nothing (their loggers write nothing, and the
    run's folder is rank 0's). `release` removes it again when the run failed before it wrote a result:
    the folder then holds only `START_FILES` and empty folders. A refused start (a bad value, a refused
    `max_epochs`, unreadable data) thus leaves nothing, while a run that failed after its first
    checkpoint, metrics or predictions keeps them.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def claim(self, root: str | Path, rank: int) -> int | None:
        """Claim the next `version_N` under `root` on rank 0 and return N; None on other ranks."""
        if rank != 0:
            return None
        version = claim_version(root)
        self.path = Path(root) / f"version_{version}"
        return version

    def release(self) -> bool:
        """Remove the claimed folder if it holds no result; returns whether it did."""
        path, self.path = self.path, None
        if path is None or not path.is_dir():
            return False
        files = [p for p in path.rglob("*") if not p.is_dir()]
        if any(p.parent != path or p.name not in START_FILES for p in files):
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True


def find_last_checkpoint(*folders: str | Path) -> Path | None:
    """The most recently written `*.ckpt` under `folders` (each a checkpoint folder or a logger root
    with `version_*/checkpoints/`), or None. Partial files of an interrupted write are ignored."""
    found: list[Path] = []
    for folder in map(Path, folders):
        found += folder.glob("*.ckpt")
        found += folder.glob("version_*/checkpoints/*.ckpt")
    found = [p for p in found if p.is_file() and not p.name.startswith(".")]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), default=None)
