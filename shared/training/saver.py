"""When train.py saves, and what a failed save means: the periodic saver.

Saves come every N steps and/or seconds, written in a background thread when `checkpoint.async_save`
(the loop only copies its state to host buffers, shared.checkpoints.snapshots), each followed by
retention once committed. Before a save the saver makes sure nothing computed from a NaN/Inf loss is
saved, and flushes train.py's summaries, so a resume never loses the points up to its checkpoint. After
one it waits while the evaluator lags more than `train.max_eval_lag` checkpoints behind. A failed save
removes its temp file and leaves older checkpoints intact: the saver warns and retries at the next
interval, and stops the run after `checkpoint.max_save_failures`.
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
from shared.checkpoints.retention import RetentionPolicy, apply_retention
from shared.checkpoints.snapshots import HostSnapshot
from shared.checkpoints.store import list_checkpoints, save
from shared.config import CheckpointConfig
from shared.errors import RunAborted
from shared.protocol.layout import TrainDir, checkpoint_folder, checkpoint_name
from shared.protocol.results import EvalResult
from shared.runtime import health
from shared.runtime.signals import StopRequest
from shared.training.distributed import Distributed
from shared.training.ledger_reader import LedgerReader
from shared.training.optim import NonFiniteGuard

log = logging.getLogger(__name__)

Evaluated = tuple[int | None, dict[int, EvalResult]]  # the ledger's newest step, and the ok results kept
SaveResult = tuple[Path | None, list[int], float]  # the committed path (None on ranks > 0), retired steps, seconds

WAIT_POLL_SECS = 0.2  # how often train.max_eval_lag re-reads the ledger while it waits


@dataclass
class _Save:
    step: int
    future: Future  # of a SaveResult
    final: bool  # a failure of this one ends the run


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
        *,
        ledger: LedgerReader | None = None,
        max_eval_lag: int | None = None,
        stop: StopRequest | None = None,
        guard: NonFiniteGuard | None = None,
        flush: Callable[[], None] = lambda: None,
        policy: RetentionPolicy | None = None,
    ) -> None:
        self.train_dir, self.options = train_dir, options
        self.group, self.shards = group or Distributed.alone(), shards
        self.policy = policy or RetentionPolicy.from_options(options)
        self.ledger = ledger or LedgerReader(train_dir, self.group, keep_results=self.policy.best is not None)
        self.max_eval_lag, self.stop, self.guard, self.flush = max_eval_lag, stop, guard, flush
        self.last_saved_step = self.last_requested_step = last_saved_step
        self.last_saved_time = time.monotonic()
        self.failures = 0  # failed saves in a row
        self.saves = 0  # this process's, committed or in flight
        self.snapshot = HostSnapshot()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if options.async_save else None
        self.in_flight: _Save | None = None

    def due_by_steps(self, step: int) -> bool:
        return bool(self.options.every_steps and step % self.options.every_steps == 0)

    def due_by_time(self) -> bool:
        """By this process's clock: under torchrun train.py agrees it between the ranks first."""
        return bool(self.options.every_secs and time.monotonic() - self.last_saved_time >= self.options.every_secs)

    def save(self, step: int, state: dict[str, Any], *, final: bool = False) -> None:
        """Write `state` as the checkpoint for `step`. Asynchronously, the loop blocks only for the
        snapshot (and for the previous save, if it is still writing); a final save is waited for, and
        after any other one the evaluator if it lags too far behind. Every rank calls it at the same steps."""
        self.wait()  # the save in flight settles first, so a refusal below never abandons it half-written
        if self.guard is not None:
            self.guard.check(self.last_saved_step)  # nothing computed from NaN/Inf is saved
        self.flush()  # the points up to a checkpoint are on disk before it: a resume never loses them
        self.ledger.poll()  # retention keeps what the evaluator has not reached by now
        evaluated = (self.ledger.newest, dict(self.ledger.results))  # as of now, for the writing thread
        started = time.monotonic()
        self.last_requested_step, self.last_saved_time = step, started
        self.saves += 1
        job = functools.partial(self._write_and_report, self._job(step, state, evaluated), time.monotonic() - started)
        if self.writer is None:
            future: Future = Future()
            try:
                future.set_result(job())
            except OSError as err:
                future.set_exception(err)
        else:
            future = self.writer.submit(job)
        self.in_flight = _Save(step, future, final)
        if final or self.writer is None:
            self.wait()
        if not final:
            self._wait_for_evaluator(step)

    def _job(self, step: int, state: dict[str, Any], evaluated: Evaluated) -> Callable[[], SaveResult]:
        """What writes this rank's part of the checkpoint: for a file, rank 0 alone, from a host snapshot
        when asynchronous; for shards (started here, collectively), every rank."""
        if self.shards:
            from shared.checkpoints import sharded

            written = sharded.save_async(
                self.train_dir.checkpoints, step, *self.shards, stamped(step, state), self.group.checkpoint_group
            )
            return functools.partial(self._commit_sharded, step, written, evaluated)
        if not self.group.is_main:
            return functools.partial(self._nothing_to_write, step)
        if self.writer is None:
            return functools.partial(self._write, step, state, None, evaluated)
        return functools.partial(self._write, step, *self.snapshot.take(state), evaluated)

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
            _, deleted, _ = pending.future.result()
        except OSError as err:
            self._failed(pending.step, err, pending.final)
            return
        self.failures = 0
        self.last_saved_step = pending.step
        self.ledger.forget(deleted)

    def _write_and_report(self, job: Callable[[], SaveResult], blocked: float) -> SaveResult:
        """Run a save job and log its commit as soon as it is committed (from the writing thread), so the
        log says `saved` before an evaluator can report that step, not one interval later."""
        path, deleted, seconds = job()
        if path is not None:  # None: a rank other than 0, which rank 0 reports for
            log.info(
                "saved %s (the loop blocked %.3fs, writing took %.2fs)%s",
                path.name,
                blocked + (seconds if self.writer is None else 0.0),  # a synchronous save blocks while writing
                seconds,
                f"; retention deleted steps {deleted}" if deleted else "",
            )
        return path, deleted, seconds

    def close(self) -> None:
        """At the end of training: the save in flight must commit, or the run fails."""
        if self.in_flight is not None:
            self.in_flight.final = True
        self.wait()
        if self.writer is not None:
            self.writer.shutdown()

    def _wait_for_evaluator(self, step: int) -> None:
        """train.max_eval_lag: after a save, wait while more checkpoints than that await evaluation.

        Only checkpoints on disk count, so one deleted by retention (checkpoint.max_unevaluated) can never
        be waited for; without a ledger there is no evaluator to wait for. Under torchrun rank 0 decides
        at each poll and the other ranks follow it poll by poll: no collective waits long.
        """
        lag = self.max_eval_lag
        if lag is None:
            return
        self.wait()  # committed, so the evaluator can reach it
        started, waited = time.monotonic(), False
        while True:
            self.ledger.poll()
            behind = self.group.broadcast(self._behind(lag) if self.group.is_main else None)
            if not behind:
                break
            if not waited:
                log.info("waiting for eval.py: %s not evaluated yet (train.max_eval_lag=%d)", behind, lag)
                waited = True
            if self.group.is_main:
                health.write_heartbeat(self.train_dir.heartbeat, step)  # waiting on purpose is not being stuck
            time.sleep(WAIT_POLL_SECS)
        if waited:
            log.info("waited %.1fs for eval.py", time.monotonic() - started)
            self.last_saved_time = time.monotonic()  # no step was taken meanwhile: not a reason for a save by time

    def _behind(self, lag: int) -> list[int]:
        """Rank 0: the checkpoints to wait for (none on a stop request, or without a ledger, or when no more
        than train.max_eval_lag await evaluation)."""
        newest = self.ledger.newest
        if self.stop or newest is None:
            return []
        behind = [c.step for c in list_checkpoints(self.train_dir.checkpoints) if c.step > newest]
        return behind if len(behind) > lag else []

    def _write(
        self, step: int, state: dict[str, Any], ready: torch.cuda.Event | None, evaluated: Evaluated
    ) -> SaveResult:
        started = time.monotonic()
        if ready is not None:
            ready.synchronize()  # the snapshot's device-to-host copies are done
        path = save(self.train_dir, step, state, weights_beside=True)
        deleted = apply_retention(self.train_dir.checkpoints, self.policy, *evaluated)
        return path, deleted, time.monotonic() - started

    def _commit_sharded(self, step: int, written: Future, evaluated: Evaluated) -> tuple[Path | None, list[int], float]:
        """Wait until every rank's shards and DCP's metadata are written; then rank 0 commits the folder."""
        started = time.monotonic()
        try:
            written.result()
        except Exception as err:  # DCP gathers every rank's failure into one exception
            raise OSError(f"writing the shards failed: {first_line(err)}") from None
        if not self.group.is_main:
            return None, [], time.monotonic() - started
        from shared.checkpoints import sharded

        path = sharded.commit(self.train_dir.checkpoints, step)
        deleted = apply_retention(self.train_dir.checkpoints, self.policy, *evaluated)
        return path, deleted, time.monotonic() - started

    def _nothing_to_write(self, step: int) -> SaveResult:
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
