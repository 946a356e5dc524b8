"""Outcome files: one evaluated (or failed, or skipped) step, handed from the evaluator that did the work
to the one that records it.

`eval/pending/step-<step:09d>.npz` holds everything the recording evaluator needs to write that step's
TensorBoard points and ledger line: the EvalResult, with each split's scalars and the small artifacts its
task's metrics computed (a confusion matrix, per-class F1, binned PR curves; never per-example outputs,
so the file's size does not grow with the evaluation set). It is written atomically (temp + rename, not
fsynced: see write_outcome), so a reader sees all of it or nothing, and read with `allow_pickle=False`:
never code.

Inside: `meta`, the JSON `{"record": <the ledger line's fields>, "evaluations": {split: {"step",
"metrics", "artifacts": {name: {"kind", ...}}}}}` as bytes, in eval.splits order. Files written before
artifacts (per-class F1 and confusion matrix fields, `<split>.targets` and `<split>.probabilities`
arrays) are read too, their PR curves binned from the arrays.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.protocol import artifacts, numbers
from shared.protocol.claims import Silence
from shared.protocol.files import atomic_file, make_folder, read_file
from shared.protocol.results import EvalResult, SplitResult

OUTCOME_RE = re.compile(r"^step-(\d{9})\.npz$")
MAX_OUTCOME_BYTES = 64 << 20  # scalars and small artifacts: a few KB (more with many classes); never per example
# An outcome being written: each writer's temp has a name of its own (an evaluator that was slow, or whose
# claim was taken over because it looked dead, may write the same step's outcome as its successor).
OUTCOME_TEMP_RE = re.compile(r"^\.step-\d{9}\.npz(\.[0-9a-f]{32})?\.tmp$")


def outcome_name(step: int) -> str:
    return f"step-{step:09d}.npz"


class OutcomeError(Exception):
    """An outcome file that cannot be read (cut short by hand, or from another version)."""


def outcome_steps(folder: Path) -> dict[int, Path]:
    """Step -> outcome file, for every outcome waiting to be recorded (a handful: they are recorded as they land)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    return {int(m.group(1)): folder / name for name in names if (m := OUTCOME_RE.match(name))}


def write_outcome(folder: Path, result: EvalResult) -> Path:
    path = folder / outcome_name(result.step)
    fields = {
        name: {
            "step": result.step,
            "metrics": split.metrics,
            "artifacts": {key: artifact.to_dict() for key, artifact in split.artifacts.items()},
        }
        for name, split in result.splits.items()
    }
    meta = numbers.dumps({"record": result.to_record(), "evaluations": fields}).encode()
    make_folder(folder)
    # Not fsynced: an outcome lost or cut by a power loss is found unreadable or missing, and its checkpoint
    # evaluated again (its claim's owner is gone), so durability would buy nothing but two fsyncs a checkpoint.
    with atomic_file(path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"), durable=False) as f:
        np.savez(f, meta=np.frombuffer(meta, dtype=np.uint8))
    return path


def remove_abandoned_temps(folder: Path, silence: Silence, timeout: float) -> None:
    """Remove outcome temps unchanged for `timeout` by this process's clock: their writers died mid-write
    (a live writer renames its temp within moments of creating it)."""
    try:
        names = [name for name in os.listdir(folder) if OUTCOME_TEMP_RE.match(name)]
    except FileNotFoundError:
        return
    silence.forget_all_but(names)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            if silence.of(name, os.stat(folder / name).st_mtime_ns) > timeout:
                (folder / name).unlink()


def read_outcome(path: Path) -> EvalResult:
    """The result in `path`; OutcomeError if it is not one this version wrote (never unpickles)."""
    try:
        with np.load(io.BytesIO(read_file(path, MAX_OUTCOME_BYTES)), allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            arrays = {name: data[name] for name in data.files if name != "meta"}
        result = EvalResult.from_record(meta["record"])
        if meta["evaluations"]:  # in eval.splits order, with what the summaries draw
            result.splits = {
                name: SplitResult(
                    {str(k): numbers.number(v) for k, v in fields["metrics"].items()},
                    _artifacts(fields, arrays.get(f"{name}.targets"), arrays.get(f"{name}.probabilities")),
                )
                for name, fields in meta["evaluations"].items()
            }
        return result
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, zipfile.BadZipFile) as err:
        raise OutcomeError(f"{path.name}: not a readable outcome file ({type(err).__name__}: {err})") from None


def _artifacts(
    fields: dict[str, Any], targets: np.ndarray | None, probabilities: np.ndarray | None
) -> dict[str, artifacts.Artifact]:
    """A split's artifacts; from a file written before artifacts, those its fields and arrays held."""
    if "artifacts" in fields:
        return {name: artifacts.from_dict(artifact) for name, artifact in fields["artifacts"].items()}
    counts = [[int(v) for v in row] for row in fields["confusion_matrix"]]
    names = artifacts.numbered(len(counts))
    found: dict[str, artifacts.Artifact] = {
        "per_class_f1": artifacts.PerClass(names, [float(v) for v in fields["per_class_f1"]]),
        "confusion_matrix": artifacts.ConfusionMatrix(names, counts),
    }
    if targets is not None and probabilities is not None:
        import torch  # only for a file written before artifacts; the rest of the module needs none

        positives, negatives = artifacts.pr_counts(torch.from_numpy(probabilities), torch.from_numpy(targets))
        found["pr_curves"] = artifacts.PRCurves(names, positives.tolist(), negatives.tolist())
    return found
