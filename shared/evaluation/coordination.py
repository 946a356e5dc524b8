"""Several eval.py daemons on one train_dir: which checkpoint each evaluates, and who records the results.

All of this is per evaluation suite: a TrainDir is one suite's view (eval/ for the default suite, eval-<name>/
for another), and a suite's daemons look only at the checkpoints its schedule selects.

Every daemon is an evaluator: it claims the oldest checkpoint nobody holds (shared/protocol/claims.py), evaluates
it and leaves its outcome in `eval/pending/` (shared/protocol/outcomes.py). One of them, the one holding the
flock on `eval/.eval.lock`, is also the *recorder*: the only process that appends to the `eval`
TensorBoard run and to the ledger, so each keeps one writer (two writers in one run folder lose or
drop points). It records the outcomes in step order, each only once every earlier checkpoint is
recorded or has its outcome waiting. Every daemon tries the lock on each turn of its loop, so when the
recorder dies (the kernel releases its lock) another takes over. A single daemon is both roles and
behaves as one daemon always did.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from shared.checkpoints.schedule import POLICIES, Schedule
from shared.checkpoints.sources import TRAINVAL, CheckpointSource
from shared.checkpoints.store import Checkpoint
from shared.config import Config
from shared.errors import UsageError
from shared.loggers import dashboards
from shared.loggers.backends import open_run
from shared.loggers.base import Logger
from shared.protocol.claims import Claims, Silence, this_evaluator
from shared.protocol.files import make_folder, release_lock, touch, try_lock
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import Ledger, LedgerTail
from shared.protocol.outcomes import OutcomeError, outcome_steps, read_outcome, remove_abandoned_temps
from shared.protocol.results import EvalResult, SplitResult

log = logging.getLogger(__name__)

Plot = Callable[[Logger, int, SplitResult], None]  # a split's summaries at a step


class CheckpointScan:
    """The checkpoints the suite's schedule `selects` not yet in its ledger, kept up to date at a cost of one
    folder listing per call.

    Only names new since the last listing are parsed and only ledger lines appended since the last
    call are read, so a folder of 10,000 checkpoints costs one `listdir` and a set difference per poll
    (bench/poll_cost.py); nothing is stat'ed, which is what makes polling cheap on NFS. A format whose
    names appear before they are complete (a foreign trainer's) asks its source again about each name not
    yet listed, at every call. A foreign trainer notes nothing it deletes: a complete checkpoint this
    scan listed, or the watcher saw completed (`arrivals`), that is gone unrecorded gets a skipped note here.
    """

    def __init__(
        self,
        train_dir: TrainDir,
        source: CheckpointSource = TRAINVAL,
        selects: Callable[[int], bool] = lambda step: True,
        arrivals: Callable[[], Mapping[int, str]] = dict,
    ) -> None:
        self.folder, self.source, self.selects, self.arrivals = train_dir.checkpoints, source, selects, arrivals
        self.within = train_dir.reads_within
        self.ledger = LedgerTail(train_dir.results)
        self.unrecorded: dict[int, str] = {}  # step -> name (file, or FSDP folder): listed, not in the ledger
        self._listed: dict[str, int] = {}  # name -> step of every complete checkpoint listed
        self._asked: set[str] = set()  # names that were no checkpoint when asked (a format named when complete)
        self._notes = LedgerTail(train_dir.retired)
        self._noted: dict[int, EvalResult] = {}  # train.py's skipped records of retired steps not in the ledger

    def update(self) -> None:
        self.ledger.update()
        for step in self.unrecorded.keys() & self.ledger.steps:
            del self.unrecorded[step]
        try:
            names = set(os.listdir(self.folder))
        except FileNotFoundError:
            names = set()
        for name in self._listed.keys() - names:  # deleted (retention)
            step = self._listed.pop(name)
            if self.unrecorded.pop(step, None) is not None and not self.source.trainer_notes_deletions:
                self._note_deleted(step, name)
        unlisted = names - self._listed.keys()
        if self.source.named_when_complete:  # a name not a checkpoint now never becomes one: ask new names once
            unlisted -= self._asked
            self._asked = names - self._listed.keys()
        for name in unlisted:
            if (step := self.source.step_of(self.folder / name)) is not None and self.selects(step):
                self._listed[name] = step
                if step not in self.ledger.steps:
                    self.unrecorded[step] = name
        if not self.source.trainer_notes_deletions:
            for step, name in self.arrivals().items():  # completed and deleted between two listings
                if name not in names and self.selects(step) and step not in self.ledger.steps | self._noted.keys():
                    self._note_deleted(step, name)
        # After the listing: train.py notes a checkpoint before it retires it, so one gone from the listing
        # has its note here already.
        self._noted.update((r.step, r) for r in self._notes.poll() or [] if self.selects(r.step))
        for step in self._noted.keys() & self.ledger.steps:
            del self._noted[step]

    def _note_deleted(self, step: int, name: str) -> None:
        file = str((self.folder / name).relative_to(self.within))
        reason = "deleted by its trainer before it was evaluated (its save_total_limit or retention)"
        self._noted[step] = EvalResult(step, file, "skipped", time.time(), reason=reason, evaluator=this_evaluator())

    def retired(self) -> dict[int, EvalResult]:
        """train.py's skipped records of the checkpoints it retired unrecorded that are gone and not in the
        ledger (a note for one still listed is a crash between note and deletion: it is evaluated)."""
        listed = set(self._listed.values())
        return {step: result for step, result in self._noted.items() if step not in listed}

    def pending(self) -> list[Checkpoint]:
        """Unrecorded checkpoints in step order."""
        return [Checkpoint(step, self.folder / self.unrecorded[step]) for step in sorted(self.unrecorded)]


class Recorder:
    """The elected recorder: appends outcomes, in step order, to the eval run and the ledger.

    It holds the lock until its process ends, and opens the ledger (dropping a line cut short) and its
    loggers (one per split's run, purge_step after the newest record, the ledger's scalars to restore
    points a run lost) only once elected, so whatever a dead recorder left half done is redone under the
    crash rules of docs/protocol.md.
    """

    def __init__(
        self, train_dir: TrainDir, config: Config, plot: Plot, runs: dict[str, Path], prepare: Callable[[], None]
    ) -> None:
        self.train_dir, self.config, self.plot, self.runs, self.prepare = train_dir, config, plot, runs, prepare
        self.lock_fd: int | None = None
        self.ledger: Ledger | None = None
        self.loggers: dict[str, Logger] = {}
        self.pending_temps = Silence()

    def become_recorder(self) -> bool:
        """Try (without waiting) to take the recorder's lock, and once taken open the ledger and the runs:
        whether this process records."""
        if self.lock_fd is None and (fd := try_lock(self.train_dir.eval_lock)) is not None:
            self.lock_fd = fd
            self.ledger = Ledger(self.train_dir.results)
            purge_step = self.ledger.next_purge_step()
            self.loggers = {  # each run given the ledger's scalars: points the run lost are written back
                split: open_run(self.config, self.train_dir, run, purge_step, known=self.ledger.scalars(split))
                for split, run in self.runs.items()
            }
            if not self.ledger.results:  # a fresh eval run: the first split's becomes the HParams session, once
                dashboards.write_hparams(next(iter(self.loggers.values())), self.config)
            log.info("recording results (this evaluator holds %s)", self.train_dir.eval_lock)
            self.prepare()  # now, while train.py starts, not at its first checkpoint
        return self.lock_fd is not None

    def record_ready(self, unrecorded: Iterable[int], retired: Mapping[int, EvalResult], claims: Claims) -> int:
        """Record every waiting outcome, and every retired step's note, that no unfinished earlier checkpoint
        precedes; how many were recorded."""
        if not self.become_recorder():
            return 0
        assert self.ledger is not None
        remove_abandoned_temps(self.train_dir.pending, self.pending_temps, claims.timeout)
        claims.remove_abandoned()
        waiting = outcome_steps(self.train_dir.pending)
        notes = self._notes_ready(retired, waiting, claims)
        unfinished = [s for s in unrecorded if s not in waiting and s not in self.ledger]
        first_gap = min(unfinished, default=None)
        recorded = 0
        for step in sorted(waiting.keys() | notes.keys()):
            if first_gap is not None and step > first_gap:
                break  # an earlier checkpoint is still being evaluated (or waits for an evaluator)
            if step in waiting:
                if step not in self.ledger:
                    try:
                        self._record(read_outcome(waiting[step]))
                        recorded += 1
                    except OutcomeError as err:
                        log.error("%s; it is removed and its checkpoint evaluated again", err)
                # The claim goes before the outcome: a recorder killed between the two leaves an outcome of a
                # recorded step, which the next one removes, never a claim no one would release.
                claims.release(step)
                waiting[step].unlink(missing_ok=True)
            else:
                if step not in self.ledger:
                    log.warning("%s: skipped, %s", notes[step].file, notes[step].reason)
                    self._record(notes[step])
                    recorded += 1
                claims.release(step)
        return recorded

    def _notes_ready(
        self, retired: Mapping[int, EvalResult], waiting: Mapping[int, Path], claims: Claims
    ) -> dict[int, EvalResult]:
        """The retired steps to record from train.py's notes: those without an outcome and without a live
        claim (an evaluator that loaded one before it went is still scoring it: its outcome is recorded)."""
        candidates = {s: r for s, r in retired.items() if s not in waiting and s not in self.ledger}
        claimed = claims.claimed_steps() if candidates else set()
        return {s: r for s, r in candidates.items() if s not in claimed or claims.stale_reason(s)}

    def _record(self, result: EvalResult) -> None:
        """Points flushed first, then the ledger line: a crash between them is redone without a second point."""
        assert self.ledger is not None
        if result.splits and result.step < self.ledger.next_purge_step():
            log.warning("%s arrived after a later step was logged; recorded, but not plotted", result.file)
        elif result.splits:
            for split, scores in result.splits.items():
                self.plot(self.loggers[split], result.step, scores)
        self.ledger.append(result)

    def close(self) -> None:
        for logger in self.loggers.values():
            logger.close()
        if self.lock_fd is not None:
            release_lock(self.lock_fd)


def join_as_evaluator(train_dir: TrainDir) -> None:
    """Make eval/ and the ledger exist: an existing ledger tells train.py's retention an evaluator is here.
    eval.py calls it once config.yaml exists: a daemon writes nothing into a folder that is not a train_dir.

    An evaluator writes in the train_dir's own folder too (best/ and its lock), so one that may not is
    refused here, before any work, rather than at its first best checkpoint."""
    if not os.access(train_dir.root, os.W_OK | os.X_OK, effective_ids=True):
        raise UsageError(
            f"{train_dir.root}: this user may not write there, and eval.py writes best/ and .best.lock there "
            "(beside eval/); give it write access (chmod g+w, or chown), or run eval.py as train.py's user"
            + ("; or pass --results-dir DIR to write the results elsewhere" if train_dir.foreign else "")
        )
    make_folder(train_dir.eval_run)
    touch(train_dir.results)


class Coordinator:
    """One evaluator's part in a train_dir that several may share: scanning, claiming, recording."""

    def __init__(
        self,
        train_dir: TrainDir,
        config: Config,
        plot: Plot,
        runs: dict[str, Path],
        prepare: Callable[[], None] = lambda: None,
        schedule: Schedule | None = None,
        source: CheckpointSource = TRAINVAL,
        arrivals: Callable[[], Mapping[int, str]] = dict,
    ) -> None:
        """`plot` writes a split's summaries at a step; `prepare`, once this process is elected recorder, does
        the one-time work of the first `plot` (imports, a figure's frame) before any checkpoint is due.
        `schedule`: the suite's (shared.checkpoints.suites); by default eval.policy's over every checkpoint.
        `source` reads the checkpoints' format; `arrivals` gives the steps the watcher saw completed."""
        self.train_dir = train_dir
        self.schedule = schedule or POLICIES[config.eval.policy]()
        self.scan = CheckpointScan(train_dir, source, self.schedule.selects, arrivals)
        self.claims = Claims(train_dir.claims, config.eval.claim_timeout_secs)
        self.recorder = Recorder(train_dir, config, plot, runs, prepare)
        self.rescan_secs = config.eval.rescan_secs
        self.scan.update()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.recorder.close()

    def record_ready(self) -> int:
        """Refresh the view of the train_dir; as the recorder, record what is ready. How many were recorded."""
        self.scan.update()
        recorded = self.recorder.record_ready(self.scan.unrecorded, self.scan.retired(), self.claims)
        if recorded:
            self.scan.update()
        return recorded

    def claim_next(self) -> tuple[list[tuple[Checkpoint, str]], Checkpoint | None]:
        """(checkpoints claimed to be recorded as skipped, each with why; the checkpoint claimed to evaluate or
        None): of those unrecorded, with no outcome waiting and no live claim, what the schedule chooses."""
        waiting = outcome_steps(self.train_dir.pending)
        claimed = self.claims.claimed_steps()
        free = [
            c
            for c in self.scan.pending()
            if c.step not in waiting and (c.step not in claimed or self.claims.stale_reason(c.step))
        ]
        plan = self.schedule.plan(free)
        skipped = [(c, why) for c, why in plan.skip if self._claim(c.step)]
        return skipped, next((c for c in plan.candidates if self._claim(c.step)), None)

    def _claim(self, step: int) -> bool:
        """Claim `step`, then make sure it was not recorded since the scan (its claim then gone too)."""
        if not self.claims.try_claim(step):
            return False
        self.scan.ledger.update()
        if step in self.scan.ledger.steps:
            self.claims.release(step)
            return False
        return True

    def all_recorded(self) -> bool:
        """Every listed checkpoint and every retired one train.py noted is in the ledger, and no outcome waits
        (to be recorded, by whoever records)."""
        return not self.scan.unrecorded and not self.scan.retired() and not outcome_steps(self.train_dir.pending)

    def has_recorded(self, step: int | None) -> bool:
        """`step` is in the ledger (None, a step not known, and one the schedule does not select count as recorded)."""
        return step is None or not self.schedule.selects(step) or step in self.scan.ledger.steps
