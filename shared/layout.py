"""The train_dir layout: every path the two processes share, named in one place.

train.py owns `config.yaml`, `checkpoints/`, `train/` and `finished.json`; eval.py owns `eval/`.
docs/protocol.md describes what each file means and who may write it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")
CHECKPOINT_TEMP_RE = re.compile(r"^\.ckpt-(\d{9})\.pt\.tmp$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a committed checkpoint file, or None for any other name (temps included)."""
    match = CHECKPOINT_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TrainDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def train_run(self) -> Path:
        """TensorBoard run written by train.py only."""
        return self.root / "train"

    @property
    def eval_run(self) -> Path:
        """TensorBoard run and evaluation ledger, written by the eval.py daemon only."""
        return self.root / "eval"

    @property
    def adhoc_run(self) -> Path:
        """TensorBoard run for `eval.py --checkpoint ... --write-summary`, so the daemon's run keeps one writer."""
        return self.root / "eval_adhoc"

    @property
    def results(self) -> Path:
        return self.eval_run / "results.jsonl"

    @property
    def best_json(self) -> Path:
        return self.eval_run / "best.json"

    @property
    def best_checkpoint(self) -> Path:
        """A hard link (or copy) of the best checkpoint; retention never looks in eval/."""
        return self.eval_run / "best.pt"

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
        """One claim file per checkpoint an evaluator is working on (shared/claims.py)."""
        return self.eval_run / "claims"

    @property
    def outcomes(self) -> Path:
        """One outcome file per evaluated step waiting to be recorded (shared/outcomes.py)."""
        return self.eval_run / "pending"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)
