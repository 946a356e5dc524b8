"""The status view (`eval.py --train-dir D --status [--json]`): per suite, which steps are evaluated ok, failed,
skipped or still pending, how far evaluation lags training, and the best so far.

It only reads: it creates no file or folder and takes no lock, so it works on a read-only train_dir, with no
evaluator ever run (then every committed checkpoint is pending), and beside the running processes. It reads in
the order in which a step moves on (finished.json, the checkpoint listing, train.py's retired notes, the claims
and outcomes, the ledger last), so a step that moves on while it reads shows further along, never missing.
A suite's *pending* steps are those its schedule selects, committed or in an evaluator's hands, that its
ledger has not recorded; of those, `claimed` ones are being evaluated and `evaluated` ones wait to be recorded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import config as cfg
from shared.checkpoints.schedule import POLICIES, Schedule
from shared.checkpoints.sources import TRAINVAL, CheckpointSource
from shared.checkpoints.suites import Suite, suites
from shared.protocol import numbers
from shared.protocol.claims import claim_step
from shared.protocol.finished import read_finished
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_results
from shared.protocol.outcomes import outcome_steps
from shared.protocol.results import EvalResult, best_of
from shared.tasks.loading import suite_config


@dataclass(frozen=True)
class Ranked:
    """A suite, and the metric that ranks its best with the way it improves (its task's, or best_metric)."""

    suite: Suite
    best_metric: str
    best_higher_is_better: bool


def suites_of(train_dir: TrainDir, config: cfg.Config) -> list[Ranked]:
    """Every suite of the train_dir (the default first), each ranked by the options it runs."""
    return [Ranked(suite, *_ranking(config, suite)) for suite in suites(train_dir, config).values()]


def _ranking(config: cfg.Config, suite: Suite) -> tuple[str, bool]:
    """The suite's best_metric and its direction. A named suite is ranked by the options its daemon runs, which
    for a suite added by eval.py's --set are only in the record it left (eval-NAME/suite.json)."""
    if suite.options is not None:
        config = config.model_copy(
            update={"suites": cfg.Suites.model_validate({suite.name: suite.options.model_dump()})}
        )
    section = suite_config(config, suite.name).eval
    return section.best_metric, section.best_higher_is_better


def schedule_options(schedule: Schedule) -> dict[str, Any]:
    """A schedule as its policy's name and its options (every_steps, start_step): its dataclass fields."""
    policy = next((name for name, kind in POLICIES.items() if type(schedule) is kind), type(schedule).__name__)
    fields = dataclasses.fields(schedule) if dataclasses.is_dataclass(schedule) else ()
    return {"policy": policy, **{f.name: getattr(schedule, f.name) for f in fields if f.name != "key"}}


def _schedule_text(schedule: Schedule) -> str:
    """The policy, and each option that is not its default: `policy all, every_steps 5`."""
    defaults = {f.name: f.default for f in dataclasses.fields(schedule)} if dataclasses.is_dataclass(schedule) else {}
    options = schedule_options(schedule)
    changed = [f"{key} {value}" for key, value in options.items() if key != "policy" and value != defaults.get(key)]
    return ", ".join([f"policy {options['policy']}", *changed])


@dataclass(frozen=True)
class Best:
    metric: str
    step: int
    value: float


@dataclass(frozen=True)
class SuiteStatus:
    suite: Suite
    ok: list[int]
    failed: list[int]
    skipped: list[int]
    pending: list[int]
    claimed: list[int]  # pending steps an evaluator has claimed and evaluates now
    evaluated: list[int]  # pending steps evaluated, whose outcome waits to be recorded
    newest_checkpoint: int | None  # the newest committed checkpoint this suite's schedule selects
    newest_recorded: int | None  # the newest step in its ledger, whatever its status
    lag_seconds: float | None  # from the newest recorded checkpoint's commit to the newest one's
    best: Best | None

    @property
    def lag_steps(self) -> int | None:
        """Steps from the newest recorded to the newest committed checkpoint; None until both exist."""
        if self.newest_checkpoint is None or self.newest_recorded is None:
            return None
        return max(0, self.newest_checkpoint - self.newest_recorded)

    def to_json(self) -> dict[str, Any]:
        lag = {"steps": self.lag_steps, "seconds": self.lag_seconds}
        best = None if self.best is None else vars(self.best)
        return {
            "schedule": schedule_options(self.suite.schedule),
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "claimed": self.claimed,
            "evaluated": self.evaluated,
            "newest_checkpoint": self.newest_checkpoint,
            "newest_recorded": self.newest_recorded,
            "lag": lag,
            "best": best,
        }


@dataclass(frozen=True)
class Status:
    train_dir: TrainDir
    finished_step: int | None  # finished.json's step; None while training goes on (or a marker without one)
    finished: bool
    newest_checkpoint: int | None
    suites: list[SuiteStatus]

    def to_json(self) -> dict[str, Any]:
        return {
            "train_dir": str(self.train_dir.root),
            "finished": {"step": self.finished_step} if self.finished else None,
            "newest_checkpoint": self.newest_checkpoint,
            "suites": {each.suite.name: each.to_json() for each in self.suites},
        }


def read_status(train_dir: TrainDir, ranked: list[Ranked], source: CheckpointSource = TRAINVAL) -> Status:
    marker = read_finished(train_dir)
    checkpoints = {c.step: c.path for c in source.list(train_dir.checkpoints)}
    retired = {r.step for r in read_results(train_dir.retired)}  # the recorder turns each into a skipped record
    return Status(
        train_dir,
        None if marker is None else marker.step,
        marker is not None,
        max(checkpoints, default=None),
        [suite_status(each, checkpoints, retired) for each in ranked],
    )


def suite_status(ranked: Ranked, checkpoints: dict[int, Path], retired: set[int]) -> SuiteStatus:
    suite, selects, places = ranked.suite, ranked.suite.schedule.selects, ranked.suite.places
    claimed = {step for name in _names(places.claims) if (step := claim_step(name)) is not None}
    evaluated = set(outcome_steps(places.pending))
    recorded = {result.step: result for result in read_results(places.results)}  # read last: it wins
    selected = [step for step in checkpoints if selects(step)]
    in_hand = {step for step in claimed | evaluated if selects(step)} - recorded.keys()
    noted = {step for step in retired if selects(step)} - recorded.keys() - in_hand  # its recorder copies them
    pending = (set(selected) - recorded.keys() - noted) | in_hand
    newest_recorded = max(recorded, default=None)
    metric = ranked.best_metric
    best = best_of(recorded.values(), metric, ranked.best_higher_is_better)
    return SuiteStatus(
        suite,
        ok=_with_status(recorded, "ok"),
        failed=_with_status(recorded, "failed"),
        skipped=sorted({*_with_status(recorded, "skipped"), *noted}),
        pending=sorted(pending),
        claimed=sorted(in_hand & claimed - evaluated),
        evaluated=sorted(in_hand & evaluated),
        newest_checkpoint=max(selected, default=None),
        newest_recorded=newest_recorded,
        lag_seconds=_seconds_between(checkpoints, newest_recorded, max(selected, default=None)),
        best=None if best is None else Best(metric, best.step, best.metrics[metric]),
    )


def _with_status(recorded: dict[int, EvalResult], status: str) -> list[int]:
    return sorted(step for step, result in recorded.items() if result.status == status)


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _seconds_between(checkpoints: dict[int, Path], since: int | None, until: int | None) -> float | None:
    """Seconds from one checkpoint's commit to another's, by their mtimes (one file system's clock, never
    compared with this host's); None when either is no longer on disk."""
    if since is None or until is None:
        return None
    if since >= until:
        return 0.0
    try:
        return round(max(0.0, os.stat(checkpoints[until]).st_mtime - os.stat(checkpoints[since]).st_mtime), 1)
    except (KeyError, FileNotFoundError):
        return None


def steps_text(steps: list[int]) -> str:
    """Steps in few words: runs of three or more at one stride as `FIRST-LAST every STRIDE`."""
    parts, i = [], 0
    while i < len(steps):
        j = i + 1
        if j < len(steps):
            stride = steps[j] - steps[i]
            while j + 1 < len(steps) and steps[j + 1] - steps[j] == stride:
                j += 1
        if j - i >= 2:
            parts.append(f"{steps[i]}-{steps[j]} every {steps[j] - steps[j - 1]}")
            i = j + 1
        else:
            parts.append(str(steps[i]))
            i += 1
    return ", ".join(parts) or "none"


def table(status: Status) -> str:
    """The status for people: a header line, then a block per suite."""
    newest = "no checkpoint yet"
    if status.newest_checkpoint is not None:
        newest = f"newest checkpoint {status.newest_checkpoint}"
    if not status.finished:
        training = "training not finished (no finished.json)"
    else:
        training = "training finished" + ("" if status.finished_step is None else f" at step {status.finished_step}")
    lines = [f"{status.train_dir.root}: {newest}; {training}"]
    for each in status.suites:
        lines += ["", f"{each.suite.name} ({_schedule_text(each.suite.schedule)})"]
        for name in ("ok", "failed", "skipped"):
            steps = getattr(each, name)
            lines.append(f"  {name:<9}{len(steps):>5}  {steps_text(steps)}")
        in_hand = [f"being evaluated: {steps_text(each.claimed)}"] if each.claimed else []
        in_hand += [f"evaluated, not yet recorded: {steps_text(each.evaluated)}"] if each.evaluated else []
        details = f" ({'; '.join(in_hand)})" if in_hand else ""
        lines.append(f"  {'pending':<9}{len(each.pending):>5}  {steps_text(each.pending)}{details}")
        lines.append(f"  {'lag':<9}{_lag_text(each)}")
        best = "none yet" if each.best is None else f"{each.best.metric} {each.best.value:.4f} at step {each.best.step}"
        lines.append(f"  {'best':<9}{best}")
    return "\n".join(lines)


def _lag_text(each: SuiteStatus) -> str:
    if each.newest_checkpoint is None:
        return "no checkpoint yet"
    if each.lag_steps is None:
        return f"nothing recorded yet; newest checkpoint {each.newest_checkpoint}"
    newest = f"newest checkpoint {each.newest_checkpoint}"
    if each.lag_seconds is not None:
        newest = f"{each.newest_checkpoint} committed {each.lag_seconds:.1f} s after it"
    return f"{each.lag_steps} steps (recorded up to {each.newest_recorded}; {newest})"


def show(train_dir: TrainDir, config: cfg.Config, as_json: bool, source: CheckpointSource = TRAINVAL) -> int:
    """Print the status (a table, or one JSON object); it reads only, and always exits 0."""
    status = read_status(train_dir, suites_of(train_dir, config), source)
    print(numbers.dumps(status.to_json()) if as_json else table(status))
    return 0
