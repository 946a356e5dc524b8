"""A TensorBoard run folder's event files: naming a new one, appending records to it, and settling the
files already there when a writer (re)opens the run (docs/protocol.md, "One point per step").

TensorBoard's loaders read a run's files in name order and keep a tag's points only while its steps go
forward: the legacy loader drops what a restart record (`SessionLog.START`) at or below a step follows,
the fast loader what a step going back follows. A file's name carries its writer's clock
(`events.out.tfevents.<seconds>....`), so a writer whose clock is behind (another host, a clock stepped
back) would name its file before the ones it continues, and its points would be hidden. So a new file
is always named to sort after every event file in the folder, whatever the clock says.

At open, the run's one writer settles what is there: records at or after `purge_step` (what a crashed
writer logged past its last durable state) are dropped. If the files would still not show every point
(out of step order, a file cut short, or points a record kept elsewhere has that the files lack: the
eval ledger's scalars), every point is rewritten in step order into one new file, and the old files go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, summary_pb2

from shared.errors import UsageError
from shared.loggers.crc32c import masked_crc32c
from shared.protocol.files import atomic_file, fsync_dir, naming, open_nofollow, read_file, write_all
from shared.protocol.layout import EVENTS_REPAIR_TEMP_RE, is_event_file

log = logging.getLogger(__name__)

Point = tuple[str, int]  # (tag, step)
Records = list[tuple[bytes, event_pb2.Event]]  # each record as framed in its file, and its event
# TensorBoard's own file name: the writer's clock in seconds (10 digits until 2286), then what makes it unique.
NAME_PREFIX = "events.out.tfevents."
NAME_SECONDS_RE = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d{{10}})\.")


def next_file_name(run_dir: Path) -> str:
    """A name TensorBoard reads after every event file already in `run_dir`: the clock's seconds, or one
    second past the newest file's, when that file's name sorts at or after the clock's."""
    newest = max((name for name in os.listdir(run_dir) if is_event_file(name)), default="")
    seconds = int(time.time())
    if f"{NAME_PREFIX}{seconds:010d}." <= newest:
        match = NAME_SECONDS_RE.match(newest)
        if not match or int(match[1]) + 1 >= 10**10:
            raise UsageError(
                f"{run_dir / newest}: TensorBoard reads this file after any event file a writer can name, so the "
                "points written from now on would be hidden; move it out of the run folder"
            )
        seconds = int(match[1]) + 1
    return f"{NAME_PREFIX}{seconds:010d}.{socket.gethostname()}.{os.getpid()}"


def frame(event: event_pb2.Event) -> bytes:
    """An event as one TFRecord: uint64 length, the length's masked CRC-32C, the data, the data's."""
    data = event.SerializeToString()
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def header() -> event_pb2.Event:
    return event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")


def restart(step: int) -> event_pb2.Event:
    """The restart record: a loader serving the run drops what it holds at or after `step`."""
    return event_pb2.Event(wall_time=time.time(), step=step, session_log=event_pb2.SessionLog(status="START"))


class EventFile:
    """A new event file of a run (named by `next_file_name`), written record by record, each whole or not
    at all: unbuffered, so TensorBoard shows a point as soon as it is logged and a crash loses none."""

    def __init__(self, run_dir: Path, purge_step: int | None) -> None:
        self.path = run_dir / next_file_name(run_dir)
        self._fd = open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        self._size = 0
        self.append(header())
        if purge_step is not None:
            self.append(restart(purge_step))

    def append(self, event: event_pb2.Event) -> None:
        """Append one record; one that fails part way (a full disk) is cut off again, so the file stays
        whole and the next record is never glued onto a cut one."""
        record = frame(event)
        with naming(self.path):
            try:
                write_all(self._fd, record)
            except BaseException:
                with contextlib.suppress(OSError):  # the write's own error is the one to report
                    os.ftruncate(self._fd, self._size)
                raise
        self._size += len(record)

    def flush(self) -> None:
        with naming(self.path):
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(path: Path) -> tuple[Records, bool]:
    """An event file's whole records (each with its framing) and their events, up to the first record cut
    short or unreadable; and whether that was the file's end (False: the file is cut or damaged).
    The CRCs are left to the readers: checking them in Python costs seconds per start on a long run."""
    data = read_file(path)  # not a FIFO, nor a link to /dev/zero, planted as an event file
    records, at = [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        end = at + 12 + length + 4
        if end > len(data):
            break
        try:
            records.append((data[at:end], event_pb2.Event.FromString(data[at + 12 : end - 4])))
        except DecodeError:
            break
        at = end
    return records, at == len(data)


def shown_whole(events: Iterable[event_pb2.Event]) -> bool:
    """Whether TensorBoard's loaders, reading these events in this order, keep every point: no tag's
    step repeats or goes back, and no restart record follows a point at or after its step."""
    last: dict[str, int] = {}
    newest = -1
    for event in events:
        if event.session_log.status == event_pb2.SessionLog.START and event.step <= newest:
            return False
        for value in event.summary.value:
            if last.get(value.tag, -1) >= event.step:
                return False
            last[value.tag] = event.step
            newest = max(newest, event.step)
    return True


def settle(run_dir: Path, purge_step: int, known: Mapping[Point, float]) -> set[Point]:
    """Drop the run's records at or after `purge_step`; if TensorBoard would then still hide or lack a
    point (files out of step order, a file cut short, a `known` scalar before purge_step missing), write
    every point in step order into one new file and remove the old ones. Returns the points the run holds.
    Only the run's one writer calls this, before it opens its own file."""
    for temp in run_dir.iterdir():
        if EVENTS_REPAIR_TEMP_RE.match(temp.name):
            temp.unlink()  # a rewrite cut short; the files it was for are still whole
    files = {path: read_events(path) for path in sorted(p for p in run_dir.iterdir() if is_event_file(p.name))}
    kept = {
        path: [r for r in records if r[1].step < purge_step or r[1].HasField("file_version")]
        for path, (records, _) in files.items()
    }
    held = {(value.tag, event.step) for _, event in _in_name_order(kept) for value in event.summary.value}
    missing = {point: value for point, value in known.items() if point[1] < purge_step and point not in held}
    cut = [path.name for path, (_, whole) in files.items() if not whole]
    in_order = shown_whole(event for _, event in _in_name_order(kept))
    if missing or cut or not in_order:
        merged = rewrite_in_step_order(run_dir, kept, missing)
        reasons = [f"{len(missing)} points restored"] if missing else []
        reasons += [f"{name} cut short" for name in cut] + ([] if in_order else ["files out of step order"])
        log.warning("%s: rewrote its event files into %s in step order (%s)", run_dir, merged, "; ".join(reasons))
    else:
        for path, records in kept.items():
            if len(records) < len(files[path][0]):
                drop_records(path, records)
    return held | missing.keys()


def drop_records(path: Path, kept: Records) -> None:
    """Rewrite one event file with only `kept` (temp file, fsync, rename); a file left with nothing but
    its header goes. A temp file never holds "tfevents" in its name, so TensorBoard never reads one."""
    if all(event.HasField("file_version") for _, event in kept):
        path.unlink()
        fsync_dir(path.parent)
    else:
        with atomic_file(path, temp=path.with_name(f".repair-{os.getpid()}.tmp")) as f:
            f.write(b"".join(record for record, _ in kept))


def rewrite_in_step_order(run_dir: Path, kept: Mapping[Path, Records], missing: Mapping[Point, float]) -> str:
    """One new file, named after every other, holding each point once in step order (the `missing`
    scalars added), opened by a restart record at step 0 so that a TensorBoard serving the run drops
    what it holds and reads it again; then the old files are removed. A crash before the removal leaves
    points twice, out of order: the next open rewrites again. Returns the new file's name."""
    restored = [(step, frame(_scalar(tag, value, step))) for (tag, step), value in missing.items()]
    points = [*_unique_points(kept), *restored]
    points.sort(key=lambda pair: pair[0])  # stable: each step's records stay in the order they were written
    name = next_file_name(run_dir)
    with atomic_file(run_dir / name, temp=run_dir / f".repair-{os.getpid()}.tmp") as f:
        f.write(frame(header()) + frame(restart(0)) + b"".join(record for _, record in points))
    for path in kept:
        path.unlink()
    fsync_dir(run_dir)
    return name


def _unique_points(kept: Mapping[Path, Records]) -> Iterator[tuple[int, bytes]]:
    """(step, record) of each summary record, in name order, but for records whose points came before."""
    seen: set[Point] = set()
    for record, event in _in_name_order(kept):
        points = {(value.tag, event.step) for value in event.summary.value}
        if points - seen:
            seen |= points
            yield event.step, record


def _in_name_order(kept: Mapping[Path, Records]) -> Iterator[tuple[bytes, event_pb2.Event]]:
    for records in kept.values():
        yield from records


def _scalar(tag: str, value: float, step: int) -> event_pb2.Event:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
