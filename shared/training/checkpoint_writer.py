"""Writing train.py's checkpoints: synchronously, in a background thread (`checkpoint.async_save`: the loop
only copies its state to host buffers, shared.checkpoints.snapshots), or as FSDP shards, and what a
failed save means.

At most one save is in flight; the next one first waits for it. Outcomes are settled in the training
thread, so a failure can stop the run there. A failed save removes its temp file and leaves older
checkpoints intact: the writer warns and the next save retries, until `checkpoint.max_save_failures`
in a row (or a failed final save) stop the run. Under torchrun every rank writes at the same steps:
with `shards` (FSDP: the model and optimizer) all ranks write their shards, else rank 0 alone writes the
file; rank 0 alone commits and retires old checkpoints (the `retire` job it is given, shared.training.retire).
Rank 0 commits only while the train_dir is still this run's (`check_folders`, shared.protocol.presence):
one removed or made anew by another train.py under it stops the run instead.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.checkpoints.format import first_line, stamped
from shared.checkpoints.snapshots import HostSnapshot
from shared.checkpoints.store import save
from shared.config import CheckpointConfig
from shared.errors import RunAborted
from shared.protocol.layout import TrainDir, checkpoint_folder, checkpoint_name
from shared.training.distributed import Distributed

log = logging.getLogger(__name__)

Retire = Callable[[], list[int]]  # deletes what retention retires after a commit; the steps deleted
SaveResult = tuple[Path | None, list[int], float]  # the committed path (None on ranks > 0), retired steps, seconds


@dataclass
class _Save:
    step: int
    future: Future  # of a SaveResult
    final: bool  # a failure of this one ends the run


@dataclass(frozen=True)
class Committed:
    step: int
    retired: list[int]  # steps retention deleted after it


class CheckpointWriter:
    def __init__(
        self,
        train_dir: TrainDir,
        options: CheckpointConfig,
        group: Distributed | None = None,
        shards: tuple[nn.Module, torch.optim.Optimizer] | None = None,
        newest: int = 0,
        check_folders: Callable[[], None] = lambda: None,
    ) -> None:
        """`newest`: the step of the checkpoint training resumed from (0: none); `check_folders` raises
        RunAborted once the train_dir is not this run's any more (called just before each commit)."""
        self.train_dir, self.options, self.check_folders = train_dir, options, check_folders
        self.group, self.shards = group or Distributed.alone(), shards
        self.failures = 0  # failed saves in a row
        self.newest = newest  # the newest committed checkpoint's step
        self.snapshot = HostSnapshot()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if options.async_save else None
        self.in_flight: _Save | None = None

    def write(self, step: int, state: dict[str, Any], retire: Retire, *, final: bool = False) -> Committed | None:
        """Start writing `state` as the checkpoint for `step`, `retire` after its commit. Asynchronously the
        caller blocks only for the snapshot; a final or synchronous save is settled before this returns,
        and what it committed returned (see `settle`). The save before it must be settled first."""
        assert self.in_flight is None, "settle() the save in flight first"
        started = time.monotonic()
        job = functools.partial(self._write_and_report, self._job(step, state, retire), time.monotonic() - started)
        if self.pool is None:
            future: Future = Future()
            try:
                future.set_result(job())
            except OSError as err:
                future.set_exception(err)
        else:
            future = self.pool.submit(job)
        self.in_flight = _Save(step, future, final)
        return self.settle() if final or self.pool is None else None

    def _job(self, step: int, state: dict[str, Any], retire: Retire) -> Callable[[], SaveResult]:
        """What writes this rank's part of the checkpoint: for a file, rank 0 alone, from a host snapshot
        when asynchronous; for shards (started here, collectively), every rank."""
        if self.shards:
            from shared.checkpoints import sharded

            written = sharded.save_async(
                self.train_dir.checkpoints, step, *self.shards, stamped(step, state), self.group.checkpoint_group
            )
            return functools.partial(self._commit_sharded, step, written, retire)
        if not self.group.is_main:
            return functools.partial(self._nothing_to_write, step)
        if self.pool is None:
            return functools.partial(self._write, step, state, None, retire)
        return functools.partial(self._write, step, *self.snapshot.take(state), retire)

    def settle(self) -> Committed | None:
        """Let the save in flight finish and settle its outcome: what it committed, or None (none in flight,
        or it failed and the run goes on)."""
        if self.in_flight is None:
            return None
        pending, self.in_flight = self.in_flight, None
        if not pending.future.done():
            started = time.monotonic()
            wait_for_futures([pending.future])
            log.info("waited %.2fs for the save of step %d to finish", time.monotonic() - started, pending.step)
        try:
            _, retired, _ = pending.future.result()
        except OSError as err:
            self.check_folders()  # a folder removed under the save is why it failed: not a reason to retry
            self._failed(pending.step, err, pending.final)
            return None
        self.failures = 0
        self.newest = pending.step
        return Committed(pending.step, retired)

    def close(self) -> Committed | None:
        """At the end of training: the save in flight must commit, or the run fails."""
        if self.in_flight is not None:
            self.in_flight.final = True
        committed = self.settle()
        if self.pool is not None:
            self.pool.shutdown()
        return committed

    def _write_and_report(self, job: Callable[[], SaveResult], blocked: float) -> SaveResult:
        """Run a save job and log its commit as soon as it is committed (from the writing thread), so the
        log says `saved` before an evaluator can report that step, not one interval later."""
        path, retired, seconds = job()
        if path is not None:  # None: a rank other than 0, which rank 0 reports for
            log.info(
                "saved %s (the loop blocked %.3fs, writing took %.2fs)%s",
                path.name,
                blocked + (seconds if self.pool is None else 0.0),  # a synchronous save blocks while writing
                seconds,
                f"; retention deleted steps {retired}" if retired else "",
            )
        return path, retired, seconds

    def _write(self, step: int, state: dict[str, Any], ready: torch.cuda.Event | None, retire: Retire) -> SaveResult:
        started = time.monotonic()
        if ready is not None:
            ready.synchronize()  # the snapshot's device-to-host copies are done
        self.check_folders()
        path = save(self.train_dir, step, state, weights_beside=True)
        return path, retire(), time.monotonic() - started

    def _commit_sharded(self, step: int, written: Future, retire: Retire) -> SaveResult:
        """Wait until every rank's shards and DCP's metadata are written; then rank 0 commits the folder."""
        started = time.monotonic()
        try:
            written.result()
        except Exception as err:  # DCP gathers every rank's failure into one exception
            raise OSError(f"writing the shards failed: {first_line(err)}") from None
        if not self.group.is_main:
            return None, [], time.monotonic() - started
        from shared.checkpoints import sharded

        self.check_folders()
        path = sharded.commit(self.train_dir.checkpoints, step)
        return path, retire(), time.monotonic() - started

    def _nothing_to_write(self, step: int) -> SaveResult:
        return None, [], 0.0

    def _failed(self, step: int, err: OSError, final: bool) -> None:
        """The temp file is gone and older checkpoints are intact: warn and retry, or stop the run."""
        self.failures += 1
        name = checkpoint_folder if self.shards else checkpoint_name
        newest = name(self.newest) if self.newest else "none yet"
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
