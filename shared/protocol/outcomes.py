"""Outcome files: one evaluated (or failed, or skipped) step, handed from the evaluator that did the work
to the one that records it.

`eval/pending/step-<step:09d>.npz` holds everything the recording evaluator needs to write that step's
TensorBoard points and ledger line: the ledger record, and for a successful evaluation, per evaluation
split, its metrics, confusion matrix and the targets and class probabilities the PR curves are drawn from. It is written
atomically (temp + fsync + rename), so a reader sees all of it or nothing, and read with
`allow_pickle=False`: plain arrays only, never code.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.evaluation.evaluator import Evaluation
from shared.protocol.files import atomic_file
from shared.protocol.ledger import EvalRecord

OUTCOME_RE = re.compile(r"^step-(\d{9})\.npz$")
_ARRAYS = ("targets", "probabilities")


def outcome_name(step: int) -> str:
    return f"step-{step:09d}.npz"


@dataclass
class Outcome:
    record: EvalRecord
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # by split name; none when failed or skipped

    @property
    def step(self) -> int:
        return self.record.step


class OutcomeError(Exception):
    """An outcome file that cannot be read (cut short by hand, or from another version)."""


def outcome_steps(folder: Path) -> dict[int, Path]:
    """Step -> outcome file, for every outcome waiting to be recorded (a handful: they are recorded as they land)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    return {int(m.group(1)): folder / name for name in names if (m := OUTCOME_RE.match(name))}


def write_outcome(folder: Path, outcome: Outcome) -> Path:
    path = folder / outcome_name(outcome.step)
    fields, arrays = {}, {}
    for split, evaluation in outcome.evaluations.items():
        fields[split] = {k: v for k, v in asdict(evaluation).items() if k not in _ARRAYS}
        for name in _ARRAYS:
            if getattr(evaluation, name) is not None:
                arrays[f"{split}.{name}"] = getattr(evaluation, name)
    meta = json.dumps({"record": asdict(outcome.record), "evaluations": fields}).encode()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)
    return path


def read_outcome(path: Path) -> Outcome:
    """The outcome in `path`; OutcomeError if it is not one this version wrote (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            arrays = {name: data[name] for name in data.files if name != "meta"}
        evaluations = {
            split: Evaluation(**fields, **{name: arrays.get(f"{split}.{name}") for name in _ARRAYS})
            for split, fields in meta["evaluations"].items()
        }
        return Outcome(EvalRecord(**meta["record"]), evaluations)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        raise OutcomeError(f"{path.name}: not a readable outcome file ({type(err).__name__}: {err})") from None
