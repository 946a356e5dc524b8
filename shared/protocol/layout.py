"""The train_dir layout: every path the two processes share, named in one place.

train.py owns `config.yaml`, `checkpoints/`, `train/` and `finished.json`; eval.py owns `eval/`, and each
named evaluation suite's `eval-<suite>/` (a TrainDir is one suite's view: `TrainDir(root, suite)`).
docs/protocol.md describes what each file means and who may write it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

# A checkpoint is a file `ckpt-<step>.pt` (one process, or DDP) or a folder `ckpt-<step>` (FSDP, written
# with torch.distributed.checkpoint); each is written under its temp name and renamed when complete.
CHECKPOINT_RE = re.compile(r"^ckpt-(\d{9})(\.pt)?$")
CHECKPOINT_TEMP_RE = re.compile(r"^\.ckpt-(\d{9})(\.pt|\.weights\.pt)?\.tmp$")
# Beside each checkpoint file, committed before it: its weights alone, all that an evaluator reads.
WEIGHTS_RE = re.compile(r"^ckpt-(\d{9})\.weights\.pt$")
METADATA = ".metadata"  # DCP's index of a sharded checkpoint, written last
SHARDED_STATE = "state.pt"  # the plain values of a sharded checkpoint (step, schedule, data position, RNG)
# train.py's skipped record of each checkpoint it retired before the evaluator recorded it (append-only).
RETIRED_NOTES = "retired.jsonl"
# An evaluation suite's name (config `suites:`): it names folders (eval-<name>/, best-<name>/), so no `_`, which
# joins a suite's run to its split (eval-<name>_train/), and no `/`; `eval` is the default suite's own.
DEFAULT_SUITE = "eval"
SUITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
SUITE_FOLDER_PREFIX = "eval-"
EVENTS_REPAIR_TEMP_RE = re.compile(r"^\.repair-\d+\.tmp$")  # an event file being rewritten after a restart


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


def weights_name(step: int) -> str:
    return f"ckpt-{step:09d}.weights.pt"


def checkpoint_folder(step: int) -> str:
    return f"ckpt-{step:09d}"


def checkpoint_temp_folder(step: int) -> str:
    return f".ckpt-{step:09d}.tmp"


def is_event_file(name: str) -> bool:
    """TensorBoard's own rule for the files of a run it reads."""
    return "tfevents" in name


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a committed checkpoint (file or folder), or None for any other name (temps included)."""
    match = CHECKPOINT_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def suite_of_folder(name: str) -> str | None:
    """The suite whose run folder (eval-<suite>/) is `name`, or None for any other name."""
    suite = name.removeprefix(SUITE_FOLDER_PREFIX)
    return suite if suite != name and SUITE_NAME_RE.match(suite) and suite != DEFAULT_SUITE else None


@dataclass(frozen=True)
class TrainDir:
    """The paths of a train_dir as one evaluation suite sees them: the default suite (`eval`) keeps eval/,
    best/ and .best.lock; a named suite has eval-<suite>/ (its ledger, claims, pending, TensorBoard run),
    best-<suite>/ and .best-<suite>.lock. Everything else is the same for every suite.

    For another trainer's run (eval.py --config with a `source:`), `root` is where the results go (that run's
    folder, or --results-dir) and `source_root` that run's folder, which eval.py only reads: its checkpoints
    are in `source_checkpoints` (docs/foreign-runs.md)."""

    root: Path
    suite: str = DEFAULT_SUITE
    source_root: Path | None = None
    source_checkpoints: Path | None = None

    def for_suite(self, suite: str) -> TrainDir:
        return dataclasses.replace(self, suite=suite)

    @property
    def named_suite(self) -> bool:
        return self.suite != DEFAULT_SUITE

    def _suited(self, base: str) -> str:
        """`base` (eval, best) for the default suite, `base-<suite>` for a named one."""
        return f"{base}-{self.suite}" if self.named_suite else base

    @property
    def foreign(self) -> bool:
        """Whether the checkpoints are another trainer's (no config.yaml, no train.py files)."""
        return self.source_root is not None

    @property
    def reads_within(self) -> Path:
        """The folder every checkpoint must resolve inside, and that the ledger's `file` is relative to."""
        return self.source_root or self.root

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.source_checkpoints or self.root / "checkpoints"

    @property
    def retired(self) -> Path:
        """train.py's notes of checkpoints it retired unrecorded, which the recorder turns into ledger lines."""
        return self.checkpoints / RETIRED_NOTES

    @property
    def train_run(self) -> Path:
        """TensorBoard run written by train.py only."""
        return self.root / "train"

    @property
    def decisions(self) -> Path:
        """train.py's log of every evaluation it acted on (shared/training/feedback.py); TensorBoard ignores it."""
        return self.train_run / "decisions.jsonl"

    @property
    def eval_run(self) -> Path:
        """TensorBoard run and evaluation ledger of this suite, written by its eval.py daemons only."""
        return self.root / self._suited("eval")

    @property
    def adhoc_run(self) -> Path:
        """TensorBoard run for `eval.py --checkpoint ... --write-summary`, so the daemon's run keeps one writer."""
        return self.root / "eval_adhoc"

    def split_run(self, split: str, adhoc: bool = False) -> Path:
        """The TensorBoard run of one evaluation split: `val` in eval/ (eval_adhoc/), any other X in eval_X/."""
        run = self.adhoc_run if adhoc else self.eval_run
        return run if split == "val" else run.with_name(f"{run.name}_{split}")

    @property
    def mlflow_run(self) -> Path:
        """The MLflow run every process of this train_dir logs into (log.backends: mlflow), created once."""
        return self.root / "mlflow_run.json"

    @property
    def results(self) -> Path:
        return self.eval_run / "results.jsonl"

    @property
    def best(self) -> Path:
        """The best evaluated weights: a relative symlink to a complete hidden folder, switched atomically."""
        return self.root / self._suited("best")

    @property
    def best_lock(self) -> Path:
        """flock(2) held by an evaluator while it compares with and replaces best/."""
        return self.root / f".{self._suited('best')}.lock"

    @property
    def best_link_temp(self) -> Path:
        """The new symlink, renamed over best/."""
        return self.root / f".{self._suited('best')}.link.tmp"

    def best_version(self, step: int, temp: bool = False) -> Path:
        return self.root / f".{self._suited('best')}-{step:09d}{'.tmp' if temp else ''}"

    @property
    def best_version_re(self) -> re.Pattern[str]:
        """This suite's best version folders (`.best-<step>`, `.best-<suite>-<step>`): complete ones and temps."""
        return re.compile(rf"^\.{re.escape(self._suited('best'))}-(\d{{9}})(\.tmp)?$")

    @property
    def finished(self) -> Path:
        """Written by train.py after its final checkpoint; tells eval.py no more checkpoints will come."""
        return self.root / "finished.json"

    @property
    def heartbeat(self) -> Path:
        """Rewritten by train.py at every log step; the compose health check reads its age."""
        return self.root / "heartbeat.json"

    @property
    def lock(self) -> Path:
        return self.root / ".train.lock"

    @property
    def eval_lock(self) -> Path:
        """Held by the recording eval.py daemon: of several evaluators, one writes the eval run and the ledger."""
        return self.eval_run / ".eval.lock"

    @property
    def claims(self) -> Path:
        """One claim file per checkpoint an evaluator is working on (shared/protocol/claims.py)."""
        return self.eval_run / "claims"

    @property
    def pending(self) -> Path:
        """One outcome file per evaluated step waiting to be recorded (shared/protocol/outcomes.py)."""
        return self.eval_run / "pending"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)


BEST_VERSION_RE = TrainDir(Path()).best_version_re  # the default suite's: `.best-<step>`, complete or `.tmp`
