"""The TensorBoard backend: one event-file writer per run folder, the only module that opens one.

A restarted process opens its run at `purge_step` (the first step it will log again). Two things make
the redone points appear once, in every reader (docs/protocol.md, "One point per step"):

- the files already in the run are rewritten without their records at step >= purge_step, so a
  reader that loads them from disk never sees the crashed process's copies (the legacy
  `EventAccumulator` purges scalars and images at a restart's START record, but not tensors: texts,
  PR curves, HParams, the layout);
- the new file still opens with that START record, so a TensorBoard already serving the run drops
  the copies it holds in memory.

A point whose (tag, step) the kept files already hold (the header a resume from the same checkpoint
writes again) is not written a second time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard import summary as summaries

from shared.loggers.base import HParam, Layout, Logger
from shared.protocol.files import atomic_file, fsync_dir, make_folder, read_file
from shared.protocol.layout import EVENTS_REPAIR_TEMP_RE, is_event_file

MINIMUM_COUNT = 1e-7  # the PR-curve plugin's own floor under a precision's or recall's denominator


class TensorBoardLogger(Logger):
    """One run folder's writer; `purge_step=None` (ad hoc runs) writes a new file and repairs nothing."""

    def __init__(self, run_dir: Path, purge_step: int | None) -> None:
        make_folder(run_dir)
        self._on_disk = drop_points_from(run_dir, purge_step) if purge_step is not None else set()
        self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=30)

    def _write(self, summary: summaries.Summary, step: int) -> None:
        fresh = [value for value in summary.value if (value.tag, step) not in self._on_disk]
        if len(fresh) < len(summary.value):
            del summary.value[:]
            summary.value.extend(fresh)
        if summary.value:
            self._writer.file_writer.add_summary(summary, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write(summaries.scalar(tag, value), step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        self._write(summaries.text(tag, markdown), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._write(summaries.image(tag, image, dataformats="HWC"), step)

    def hparams(self, values: Mapping[str, HParam]) -> None:
        """Only the session-start record, into this run: the plugin then takes the run's scalars as its
        metrics (SummaryWriter.add_hparams would make a new run folder). Integers go as text, since the
        HParams tab prints every number with five significant digits (32 as 32.000)."""
        shown = {k: v if isinstance(v, (float, str)) else str(v) for k, v in values.items()}
        _, session_start, _ = summaries.hparams(shown, metric_dict={})
        self._write(session_start, 0)

    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        """The plugin's raw form, from the counts: each threshold counts what lies in its bucket and above."""
        true_pos, false_pos = (np.cumsum(counts[::-1])[::-1] for counts in (positives, negatives))
        false_neg, true_neg = positives.sum() - true_pos, negatives.sum() - false_pos
        precision = true_pos / np.maximum(true_pos + false_pos, MINIMUM_COUNT)
        recall = true_pos / np.maximum(true_pos + false_neg, MINIMUM_COUNT)
        raw = summaries.pr_curve_raw(tag, true_pos, false_pos, true_neg, false_neg, precision, recall, len(positives))
        self._write(raw, step)

    def layout(self, layout: Layout) -> None:
        self._write(summaries.custom_scalars(dict(layout)), 0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def drop_points_from(run_dir: Path, purge_step: int) -> set[tuple[str, int]]:
    """Rewrite each event file of the run that holds records at step >= purge_step without them (temp
    file, fsync, rename); a file left with nothing but its header goes. Returns the (tag, step) of every
    summary value kept. A temp file never holds "tfevents" in its name, so TensorBoard never reads
    one. Only the run's one writer calls this, before it opens its own file."""
    kept: set[tuple[str, int]] = set()
    for temp in run_dir.iterdir():
        if EVENTS_REPAIR_TEMP_RE.match(temp.name):
            temp.unlink()  # a rewrite cut short; the file it was for is still whole
    for path in sorted(p for p in run_dir.iterdir() if is_event_file(p.name)):
        records, events = read_events(path)
        keep = [i for i, event in enumerate(events) if event.step < purge_step or event.HasField("file_version")]
        for i in keep:
            kept.update((value.tag, events[i].step) for value in events[i].summary.value)
        if len(keep) == len(records):
            continue
        if all(events[i].HasField("file_version") for i in keep):
            path.unlink()
            fsync_dir(run_dir)
        else:
            with atomic_file(path, temp=path.with_name(f".repair-{os.getpid()}.tmp")) as f:  # no "tfevents" in it
                f.write(b"".join(records[i] for i in keep))
    return kept


def read_events(path: Path) -> tuple[list[bytes], list[event_pb2.Event]]:
    """An event file's whole records, each with its framing (TFRecord: uint64 length, the length's masked
    CRC-32C, the data, the data's), and their events, up to the first record cut short or unreadable.
    The CRCs are left to the readers: checking them in Python costs seconds per start on a long run."""
    data = read_file(path)  # not a FIFO, nor a link to /dev/zero, planted as an event file
    records, events, at = [], [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        end = at + 12 + length + 4
        if end > len(data):
            break
        try:
            events.append(event_pb2.Event.FromString(data[at + 12 : end - 4]))
        except DecodeError:
            break
        records.append(data[at:end])
        at = end
    return records, events
