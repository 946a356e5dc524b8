"""The finished marker (`finished.json`): train.py's word that no checkpoint comes after the step it names.

train.py writes it once its final checkpoint is committed, and a train.py started again on the train_dir
(to train more steps, say) retracts it, durably, before anything else, so no new checkpoint ever sits
beside an earlier run's marker, even after a power loss. An evaluator counts the marker only once the
step it names is in the ledger: a final checkpoint listed late (an NFS listing) is still evaluated. The
marker's `wall_time` tells one marker from the next (launch.py's evaluators wait for the one after the
marker they found). docs/protocol.md, "Finishing".
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from shared.protocol.files import RECORD_BYTES, fsync_dir, read_file, write_atomic
from shared.protocol.layout import TrainDir

MAX_WALL_TIME = 1e12  # seconds since 1970 (the year 33658): the range of eval.py's --after-finished


@dataclass(frozen=True)
class Finished:
    step: int | None  # None: a marker whose step cannot be read, which counts once everything is recorded
    wall_time: float | None


def mark_finished(train_dir: TrainDir, step: int, **fields: Any) -> None:
    record = {"step": step, "wall_time": time.time(), **fields}
    write_atomic(train_dir.finished, (json.dumps(record) + "\n").encode())


def retract_finished(train_dir: TrainDir) -> Finished | None:
    """Remove the marker, durably; the one removed, if there was one."""
    marker = read_finished(train_dir)
    with contextlib.suppress(FileNotFoundError):
        train_dir.finished.unlink()
        fsync_dir(train_dir.root)
    return marker


def read_finished(train_dir: TrainDir) -> Finished | None:
    """The marker, or None when there is none."""
    try:
        record = json.loads(read_file(train_dir.finished, RECORD_BYTES))
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError):  # not JSON (written by hand, or planted), or nested past the parser
        return Finished(None, None)
    if not isinstance(record, dict):
        return Finished(None, None)
    step, wall_time = record.get("step"), record.get("wall_time")
    return Finished(
        step if isinstance(step, int) and not isinstance(step, bool) else None,
        float(wall_time) if isinstance(wall_time, (int, float)) and not isinstance(wall_time, bool) else None,
    )
