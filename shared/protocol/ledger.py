"""The evaluation ledger `eval/results.jsonl`.

Only eval.py appends to the ledger, one whole line per checkpoint step, after that step's TensorBoard
points are flushed. A line cut short by a crash is dropped on the next start; that step is then
evaluated again and its points replaced (see shared/summaries.py on purge_step).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.protocol.files import append_line

log = logging.getLogger(__name__)


@dataclass
class EvalRecord:
    step: int
    file: str  # relative to the train_dir
    status: Literal["ok", "failed", "skipped"]
    wall_time: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # loss, accuracy, f1_macro, ... when ok
    per_class_f1: list[float] = field(default_factory=list)  # of the first split, as `metrics`
    split_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # every split's, by name
    reason: str = ""  # why, when failed or skipped
    evaluator: str = ""  # host:pid of the eval.py that evaluated it (several may share a train_dir)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record; a last line without its newline is a write cut short and is ignored."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or empty)
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not a JSON record; ignoring it", path, number)
    return records


class LedgerTail:
    """A reader's view of the ledger: the records appended since the last look, which steps are recorded,
    and the newest (train.py, and evaluators that do not write it).

    The ledger only grows, so each call reads just the whole lines appended since the last one, and
    only after a stat says the file grew; a restarted evaluator only ever cuts an incomplete last line,
    which this never consumed. A ledger shorter than what was read is a new one (eval/ cleared): it is
    read from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: set[int] = set()
        self.newest = -1  # the newest step read so far, whatever its status
        self._offset = 0  # bytes of whole lines already read

    def poll(self) -> list[dict[str, Any]] | None:
        """The records appended since the last call, in ledger order; None if no evaluator keeps a ledger."""
        try:
            size = os.stat(self.path).st_size
            if size < self._offset:
                self._offset, self.newest, self.steps = 0, -1, set()
            if size == self._offset:
                return []
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                appended = f.read()
        except FileNotFoundError:
            self._offset, self.newest, self.steps = 0, -1, set()
            return None
        whole = appended[: appended.rfind(b"\n") + 1]
        self._offset += len(whole)
        records = []
        for line in whole.splitlines():
            try:
                record = json.loads(line)
                step = record["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s: a line that is not a record; ignoring it", self.path)
                continue
            self.steps.add(step)
            self.newest = max(self.newest, step)
            records.append(record)
        return records

    def update(self) -> bool:
        """Read the lines appended since the last call into `steps`; False if there is no ledger."""
        return self.poll() is not None

    def newest_step(self) -> int | None:
        """The newest recorded step, -1 if none yet, None if no evaluator keeps a ledger."""
        return self.newest if self.update() else None


def record_metric(record: dict[str, Any], split: str, metric: str) -> float | None:
    """`metric` on `split` from an ok record: from `split_metrics` when the record has it (several
    evaluation splits), else from `metrics` for the default split `val`; None when it is not there."""
    value = record.get("split_metrics", {}).get(split, {}).get(metric)
    if value is None and split == "val":
        value = record.get("metrics", {}).get(metric)
    return value


class Ledger:
    """The evaluator's view of results.jsonl: which steps are done, and appending new ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_incomplete_line()
        self.records: dict[int, dict[str, Any]] = {r["step"]: r for r in read_records(path)}

    def __contains__(self, step: int) -> bool:
        return step in self.records

    def next_purge_step(self) -> int:
        """Points at or after this step were written without a record; the writer drops them."""
        return max(self.records, default=-1) + 1

    def append(self, record: EvalRecord) -> None:
        line = json.dumps(asdict(record), sort_keys=True)
        append_line(self.path, line)
        self.records[record.step] = json.loads(line)

    def _drop_incomplete_line(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.path.touch()  # an existing ledger tells train.py an evaluator is keeping up
            return
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("dropping an incomplete last line of %s (a write cut short)", self.path)
            os.truncate(self.path, end)


def best_record(records: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best successful record by `metric`; the earliest step wins a tie."""
    scored = [r for r in records if r["status"] == "ok" and metric in r["metrics"]]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: (sign * r["metrics"][metric], -r["step"]))
