"""The TensorBoard backend: one event-file writer per run folder, the only module that opens one.

A restarted process opens its run at `purge_step` (the first step it will log again). Three things make
the redone points appear once, in every reader, whatever the writers' clocks (docs/protocol.md, "One
point per step"; shared/loggers/event_files.py):

- the files already in the run are settled first: records at step >= purge_step dropped, so a reader
  that loads them from disk never sees the crashed process's copies (the legacy `EventAccumulator`
  purges scalars and images at a restart's START record, but not tensors: texts, PR curves, HParams,
  the layout), and rewritten in step order when TensorBoard would hide or lack points;
- the new file is named to be read after every file already there, and opens with that START record,
  so a TensorBoard already serving the run drops the copies it holds in memory.

A point whose (tag, step) the kept files already hold (the header a resume from the same checkpoint
writes again) is not written a second time.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from torch.utils.tensorboard import summary as summaries

from shared.loggers.base import HParam, Layout, Logger
from shared.loggers.event_files import EventFile, Point, settle
from shared.protocol.files import make_folder

MINIMUM_COUNT = 1e-7  # the PR-curve plugin's own floor under a precision's or recall's denominator
PNG_LEVEL = 1  # zlib's fastest: 2 ms for a confusion image, against 10 ms for Pillow's default; a third larger


def png(image: np.ndarray) -> bytes:
    """An HWC uint8 RGB image as PNG: rows unfiltered, compressed at PNG_LEVEL (what TensorBoard decodes
    from any encoder; Pillow's adaptive row filters cost more than they save on flat drawings)."""
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(rows.tobytes(), PNG_LEVEL)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class TensorBoardLogger(Logger):
    """One run folder's writer; `purge_step=None` (ad hoc runs) writes a new file and repairs nothing.
    `known`: scalars the run must hold before purge_step, kept elsewhere (the eval ledger's); the ones the
    files lack are written back."""

    def __init__(self, run_dir: Path, purge_step: int | None, known: Mapping[Point, float] | None = None) -> None:
        make_folder(run_dir)
        self._on_disk = settle(run_dir, purge_step, known or {}) if purge_step is not None else set()
        self._file = EventFile(run_dir, purge_step)

    def _write(self, summary: summaries.Summary, step: int) -> None:
        fresh = [value for value in summary.value if (value.tag, step) not in self._on_disk]
        if len(fresh) < len(summary.value):
            del summary.value[:]
            summary.value.extend(fresh)
        if summary.value:
            self._file.append(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write(summaries.scalar(tag, value), step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        self._write(summaries.text(tag, markdown), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HWC uint8 RGB image, as the images plugin reads it (torch's summary.image, encoded faster)."""
        height, width, channels = image.shape
        encoded = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png(np.ascontiguousarray(image))
        )
        self._write(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=encoded)]), step)

    def hparams(self, values: Mapping[str, HParam]) -> None:
        """Only the session-start record, into this run: the plugin then takes the run's scalars as its
        metrics (torch's SummaryWriter.add_hparams would make a new run folder). Integers go as text, since the
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
        self._file.flush()

    def close(self) -> None:
        self._file.close()
