"""The evaluation ledger `eval/results.jsonl`: one line per checkpoint step, an EvalResult each.

Only eval.py appends to the ledger, one whole line per checkpoint step, after that step's TensorBoard
points are flushed. A line cut short by a crash is dropped on the next start; that step is then
evaluated again and its points replaced (see shared/loggers/tensorboard.py on purge_step). Every reader
checks each line's shape: a line that is not a result (garbage, a bare number, no integer step, bytes
that are not UTF-8) is skipped with one warning (per process), so its step counts as not evaluated and is
evaluated again. A NaN or infinite metric is written as a string ("NaN"; shared.protocol.numbers).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from shared.protocol import numbers
from shared.protocol.files import append_line, make_folder, open_regular, read_file, repair_last_line, touch
from shared.protocol.results import EvalResult, RecordError

log = logging.getLogger(__name__)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of an append-only file; a last line without its newline is a write cut
    short and is ignored, a line that is not JSON is skipped with a warning."""
    return [record for _, _, record in _json_lines(path) if record is not _NOT_JSON]


def read_results(path: Path) -> list[EvalResult]:
    """Every result in the ledger, in ledger order; lines that are not results are skipped with a warning."""
    results = []
    for number, line, record in _json_lines(path):
        if (result := _result(record, f"{path}:{number}", line)) is not None:
            results.append(result)
    return results


_NOT_JSON = object()


def _json_lines(path: Path) -> list[tuple[int, bytes, Any]]:
    try:
        data = read_file(path)
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete (or empty)
    return [(number, line, _parse(line, f"{path}:{number}")) for number, line in enumerate(lines, 1)]


def _parse(line: bytes, where: str) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        _warn_once(where, line, "is not a JSON record; ignoring it")
        return _NOT_JSON


def _result(record: Any, where: str, line: bytes = b"") -> EvalResult | None:
    """The line's result, or None (warned) when it is not one: its step is then evaluated again."""
    if record is _NOT_JSON:
        return None
    try:
        return EvalResult.from_record(record)
    except RecordError as err:
        _warn_once(where, line, f"is not an evaluation record ({err}); ignoring it, so its step is evaluated again")
        return None


_warned: set[tuple[str, bytes]] = set()  # (file:line, its bytes): a process has several readers of one ledger


def _warn_once(where: str, line: bytes, what: str) -> None:
    if (where, line) not in _warned:
        _warned.add((where, line))
        log.warning("%s %s", where, what)


class LedgerTail:
    """A reader's view of the ledger: the results appended since the last look, which steps are recorded,
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
        self._lines = 0  # whole lines already read, to name a bad one

    def poll(self) -> list[EvalResult] | None:
        """The results appended since the last call, in ledger order; None if no evaluator keeps a ledger."""
        try:
            info = os.lstat(self.path)  # a link planted here is refused, never followed
            if not stat.S_ISREG(info.st_mode):
                os.close(open_regular(self.path))  # NotAFile: one line saying what is there instead
            size = info.st_size
            if size < self._offset:
                self._forget()
            if size == self._offset:
                return []
            with open(open_regular(self.path), "rb") as f:  # not a FIFO or a link planted in its place
                f.seek(self._offset)
                appended = f.read()
        except FileNotFoundError:
            self._forget()
            return None
        whole = appended[: appended.rfind(b"\n") + 1]
        self._offset += len(whole)
        results = []
        for line in whole.splitlines():
            self._lines += 1
            where = f"{self.path}:{self._lines}"
            if (result := _result(_parse(line, where), where, line)) is not None:
                self.steps.add(result.step)
                self.newest = max(self.newest, result.step)
                results.append(result)
        return results

    def update(self) -> bool:
        """Read the lines appended since the last call into `steps`; False if there is no ledger."""
        return self.poll() is not None

    def _forget(self) -> None:
        self._offset, self._lines, self.newest, self.steps = 0, 0, -1, set()


class Ledger:
    """The evaluator's view of results.jsonl: which steps are done, and appending new ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        make_folder(path.parent)
        touch(path)  # an existing ledger tells train.py an evaluator is keeping up
        repair_last_line(path)
        self.results: dict[int, EvalResult] = {r.step: r for r in read_results(path)}

    def __contains__(self, step: int) -> bool:
        return step in self.results

    def scalars(self, split: str) -> dict[tuple[str, int], float]:
        """(metric, step) -> value of every ok result's `split`: the points its run must show."""
        return {
            (metric, step): value
            for step, result in self.results.items()
            if result.status == "ok" and split in result.splits
            for metric, value in result.splits[split].metrics.items()
        }

    def next_purge_step(self) -> int:
        """Points at or after this step were written without a record; the writer drops them."""
        return max(self.results, default=-1) + 1

    def append(self, result: EvalResult) -> None:
        append_line(self.path, numbers.dumps(result.to_record(), sort_keys=True))
        self.results[result.step] = result
