"""Checkpoints: atomic writes, safe loads, and retention.

A checkpoint exists under its final name `checkpoints/ckpt-<step:09d>.pt` only once it is complete:
it is written to `.ckpt-<step>.pt.tmp` in the same folder, fsynced, renamed into place and the folder
fsynced. Loads never unpickle arbitrary objects (`weights_only=True`). Sharded checkpoints (FSDP) are
folders `ckpt-<step:09d>/` committed the same way (shared/sharded.py); listing, loading, retention and
stale-temp cleanup here take both forms. shared.checkpoints.sharded is imported where a folder is handled: it
imports torch.distributed.checkpoint, which adds about half a second to every start otherwise.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.checkpoints.snapshots import HostSnapshot
from shared.config import CheckpointConfig
from shared.protocol.files import atomic_file, fsync_dir
from shared.protocol.layout import (
    CHECKPOINT_TEMP_RE,
    TrainDir,
    checkpoint_folder,
    checkpoint_name,
    checkpoint_step,
    checkpoint_temp_folder,
)
from shared.protocol.ledger import LedgerTail
from shared.runtime.errors import CheckpointError, RunAborted
from shared.training.distributed import Distributed

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, order=True)
class Checkpoint:
    step: int
    path: Path


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Committed checkpoints in step order; temp files and other names are not checkpoints."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [Checkpoint(step, folder / name) for name in names if (step := checkpoint_step(name)) is not None]
    return sorted(found)


def save(train_dir: TrainDir, step: int, state: dict[str, Any]) -> Path:
    """Commit `state` as the checkpoint for `step`; readers see all of it or nothing."""
    path = train_dir.checkpoint(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, path.with_name(f".{path.name}.tmp")) as f:
        # An open file, not a path: torch.save names the archive's inner folder after a path's stem.
        torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, f)
    return path


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's state, or CheckpointError saying why it cannot be used.

    FileNotFoundError passes through: the caller decides what a vanished file means. A sharded
    checkpoint (a folder) gives its full weights and plain state, without the optimizer state.
    """
    if os.path.isdir(path):
        from shared.checkpoints import sharded

        return _checked(sharded.load_for_eval(Path(path)))
    if os.path.getsize(path) == 0:
        raise CheckpointError("empty file (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_reason(err)) from None
    except Exception as err:  # corrupt bytes surface as many exception types (KeyError, struct.error, ...)
        raise CheckpointError(
            f"not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {_first_line(err)}"
        ) from None
    return _checked(state)


def _checked(state: Any) -> dict[str, Any]:
    """`state` if it has what every trainval checkpoint has, else CheckpointError saying what is wrong."""
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError("not a trainval checkpoint: no 'model' and 'step' entries")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise CheckpointError(f"its step {state['step']!r} is not a non-negative integer")
    version = state.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError("not a trainval checkpoint: no integer 'format_version'")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"format version {version!r} is newer than this trainval reads ({FORMAT_VERSION}); upgrade trainval"
        )
    return state


def load_for_resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, sharded_training: bool
) -> dict[str, Any]:
    """What TrainState.load_state_dict takes. A sharded checkpoint (folder) restores the model's and the
    optimizer's shards here, resharded to this run's world size; a file is read whole by every rank, on
    the CPU: the RNG states must stay there, and loading the weights copies them to the device."""
    if os.path.isdir(path) != sharded_training:
        written, now = ("fsdp", "ddp") if os.path.isdir(path) else ("ddp", "fsdp")
        raise CheckpointError(f"it was written with train.strategy={written}, not {now}; resume with {written}")
    if sharded_training:
        from shared.checkpoints import sharded

        return _checked(sharded.load_into(Path(path), model, optimizer) | {"model": None})
    return load(path, map_location="cpu")


def restore_model(model: nn.Module, state: dict[str, Any]) -> None:
    """Load weights strictly, refusing wrong shapes, missing or extra keys, and non-finite values."""
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError("its 'model' entry is not a state dict")
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    misfits = [
        f"{name}: {tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in weights and (not torch.is_tensor(weights[name]) or weights[name].shape != tensor.shape)
    ]
    problems = misfits[:3]
    if unexpected:
        problems.insert(0, f"unexpected keys {_brief(unexpected)}")
    if missing:
        problems.insert(0, f"missing keys {_brief(missing)}")
    if problems:
        raise CheckpointError("does not fit this model (another model config?): " + "; ".join(problems))
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weight {name!r} holds NaN or Inf values")
    model.load_state_dict(weights, strict=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files and folders a killed writer left behind, matched by their exact name pattern only."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if CHECKPOINT_TEMP_RE.match(name):
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass(frozen=True)
class RetentionPolicy:
    max_to_keep: int
    keep_every_n_steps: int = 0
    max_unevaluated: int = 0

    def to_delete(self, steps: list[int], last_evaluated: int | None) -> tuple[list[int], list[int]]:
        """(steps to delete, of those the ones the evaluator has not seen yet).

        Keeps the newest `max_to_keep`, every multiple of `keep_every_n_steps`, and, when an evaluator
        keeps a ledger (`last_evaluated` is not None), up to `max_unevaluated` of the oldest steps it has
        not reached yet, so a slower evaluator still gets them.
        """
        steps = sorted(steps)
        keep = set(steps[-self.max_to_keep :])
        if self.keep_every_n_steps:
            keep |= {s for s in steps if s % self.keep_every_n_steps == 0}
        unevaluated = [s for s in steps if last_evaluated is not None and s > last_evaluated and s not in keep]
        keep |= set(unevaluated[: self.max_unevaluated])
        delete = [s for s in steps if s not in keep]
        return delete, sorted(set(delete) & set(unevaluated))


def apply_retention(folder: Path, policy: RetentionPolicy, last_evaluated: int | None) -> list[int]:
    """Delete what the policy lets go, after the newest checkpoint is committed; return deleted steps."""
    checkpoints = list_checkpoints(folder)
    delete, unevaluated = policy.to_delete([c.step for c in checkpoints], last_evaluated)
    if unevaluated:
        log.warning(
            "checkpoint.max_unevaluated=%d reached: deleting steps %s before the evaluator reached them",
            policy.max_unevaluated,
            unevaluated,
        )
    deleted = []
    for checkpoint in checkpoints:
        if checkpoint.step in delete:
            try:
                _delete(checkpoint)
                deleted.append(checkpoint.step)
            except OSError as err:  # a retention failure never costs a checkpoint; the next save tries again
                log.warning("could not delete %s: %s", checkpoint.path.name, err.strerror)
    if deleted:
        fsync_dir(folder)
    return deleted


def _delete(checkpoint: Checkpoint) -> None:
    """A file is unlinked; a folder is first renamed to its temp name, so no reader ever sees half of one
    under its committed name (a leftover is removed as a stale temp at the next start)."""
    if not checkpoint.path.is_dir():
        checkpoint.path.unlink(missing_ok=True)
        return
    temp = checkpoint.path.with_name(checkpoint_temp_folder(checkpoint.step))
    os.replace(checkpoint.path, temp)
    shutil.rmtree(temp)


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The substance of torch's weights-only refusal, without its advice to load with weights_only=False."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = " ".join(line for line in lines if not line.startswith(boilerplate)) or "unpickling failed"
    if "GLOBAL" in detail:  # the file asks to import something: the way pickles run code
        return f"refused to load: it holds objects other than tensors and plain values ({detail})"
    return f"not a readable checkpoint (truncated or corrupt?): {detail}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _brief(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class _Save:
    step: int
    future: Future  # of (path, deleted steps, seconds writing)
    final: bool  # a failure of this one ends the run
    blocked: float  # seconds the training loop spent on it


class PeriodicSaver:
    """When train.py saves (every N steps and/or seconds), the writing (in a background thread when
    `checkpoint.async_save`), retention after each commit, and what a failed save means.

    At most one save is in flight; the next one first waits for it. Outcomes are settled in the training
    thread, so a failure can stop the run there. Under torchrun every rank calls `save` at the same
    steps: with `shards` (FSDP: the model and optimizer) all ranks write their shards, else rank 0 alone
    writes the file; rank 0 alone commits and applies retention.
    """

    def __init__(
        self,
        train_dir: TrainDir,
        options: CheckpointConfig,
        last_saved_step: int,
        group: Distributed | None = None,
        shards: tuple[nn.Module, torch.optim.Optimizer] | None = None,
    ) -> None:
        self.train_dir, self.options = train_dir, options
        self.group, self.shards = group or Distributed.alone(), shards
        self.policy = RetentionPolicy(options.max_to_keep, options.keep_every_n_steps, options.max_unevaluated)
        self.last_saved_step = self.last_requested_step = last_saved_step
        self.last_saved_time = time.monotonic()
        self.failures = 0  # failed saves in a row
        self.ledger = LedgerTail(train_dir.results)  # read by the writing thread only
        self.snapshot = HostSnapshot()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if options.async_save else None
        self.in_flight: _Save | None = None

    def due(self, step: int) -> bool:
        return self.due_by_steps(step) or self.due_by_time()

    def due_by_steps(self, step: int) -> bool:
        return bool(self.options.every_steps and step % self.options.every_steps == 0)

    def due_by_time(self) -> bool:
        """By this process's clock: under torchrun train.py agrees it between the ranks first."""
        return bool(self.options.every_secs and time.monotonic() - self.last_saved_time >= self.options.every_secs)

    def save(self, step: int, state: dict[str, Any], *, final: bool = False) -> None:
        """Write `state` as the checkpoint for `step`. Asynchronously, the loop blocks only for the
        snapshot (and for the previous save, if it is still writing); a final save is waited for."""
        self.wait()
        started = time.monotonic()
        self.last_requested_step, self.last_saved_time = step, started
        if self.shards:
            from shared.checkpoints import sharded

            plain = {"format_version": FORMAT_VERSION, "step": step, **state}
            written = sharded.save_async(
                self.train_dir.checkpoints, step, *self.shards, plain, self.group.checkpoint_group
            )
            job = functools.partial(self._commit_sharded, step, written)
        elif not self.group.is_main:
            job = functools.partial(self._nothing_to_write, step)
        elif self.writer is None:
            job = functools.partial(self._write, step, state, None)
        else:
            job = functools.partial(self._write, step, *self.snapshot.take(state))
        if self.writer is None:
            future: Future = Future()
            try:
                future.set_result(job())
            except OSError as err:
                future.set_exception(err)
        else:
            future = self.writer.submit(job)
        self.in_flight = _Save(step, future, final, time.monotonic() - started)
        if final or self.writer is None:
            self.wait()

    def wait(self) -> None:
        """Let the save in flight finish and settle its outcome."""
        if self.in_flight is None:
            return
        pending, self.in_flight = self.in_flight, None
        if not pending.future.done():
            started = time.monotonic()
            wait_for_futures([pending.future])
            log.info("waited %.2fs for the save of step %d to finish", time.monotonic() - started, pending.step)
        try:
            path, deleted, seconds = pending.future.result()
        except OSError as err:
            self._failed(pending.step, err, pending.final)
            return
        self.failures = 0
        self.last_saved_step = pending.step
        if path is None:  # a rank other than 0: rank 0 reports the save
            return
        log.info(
            "saved %s (the loop blocked %.3fs, writing took %.2fs)%s",
            path.name,
            pending.blocked,
            seconds,
            f"; retention deleted steps {deleted}" if deleted else "",
        )

    def close(self) -> None:
        """At the end of training: the save in flight must commit, or the run fails."""
        if self.in_flight is not None:
            self.in_flight.final = True
        self.wait()
        if self.writer is not None:
            self.writer.shutdown()

    def _write(self, step: int, state: dict[str, Any], ready: torch.cuda.Event | None) -> tuple[Path, list[int], float]:
        started = time.monotonic()
        if ready is not None:
            ready.synchronize()  # the snapshot's device-to-host copies are done
        path = save(self.train_dir, step, state)
        deleted = apply_retention(self.train_dir.checkpoints, self.policy, self.ledger.newest_step())
        return path, deleted, time.monotonic() - started

    def _commit_sharded(self, step: int, written: Future) -> tuple[Path | None, list[int], float]:
        """Wait until every rank's shards and DCP's metadata are written; then rank 0 commits the folder."""
        started = time.monotonic()
        try:
            written.result()
        except Exception as err:  # DCP gathers every rank's failure into one exception
            raise OSError(f"writing the shards failed: {_first_line(err)}") from None
        if not self.group.is_main:
            return None, [], time.monotonic() - started
        from shared.checkpoints import sharded

        path = sharded.commit(self.train_dir.checkpoints, step)
        deleted = apply_retention(self.train_dir.checkpoints, self.policy, self.ledger.newest_step())
        return path, deleted, time.monotonic() - started

    def _nothing_to_write(self, step: int) -> tuple[None, list[int], float]:
        return None, [], 0.0

    def _failed(self, step: int, err: OSError, final: bool) -> None:
        """The temp file is gone and older checkpoints are intact: warn and retry, or stop the run."""
        self.failures += 1
        name = checkpoint_folder if self.shards else checkpoint_name
        newest = name(self.last_saved_step) if self.last_saved_step else "none yet"
        what = f"could not save the checkpoint for step {step}: {err.strerror or err} ({err.filename or ''})"
        if final or self.failures >= self.options.max_save_failures:
            raise RunAborted(
                f"{what}; {self.failures} failed save(s) in a row. The newest complete checkpoint is {newest}. "
                "Free disk space or fix the folder's permissions, then run the same command to resume"
            ) from None
        log.warning(
            "%s; the newest complete checkpoint is still %s; retrying at the next interval (%d/%d failures)",
            what,
            newest,
            self.failures,
            self.options.max_save_failures,
        )
