"""TensorBoard writing. One writer per run folder (train/ for train.py, eval/ for eval.py), each opened
with `purge_step` so a restarted process replaces, rather than duplicates, the points it logged after
its last durable state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from shared.protocol.files import make_folder


def open_writer(run_dir: Path, purge_step: int, enabled: bool = True) -> SummaryWriter:
    """A writer whose START record drops every point at step >= purge_step from earlier files.

    Not `enabled` (torchrun ranks other than 0), a writer that writes nothing: one writer per run.
    """
    if not enabled:
        return _Silent()  # type: ignore[return-value]
    make_folder(run_dir)
    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=30)


class _Silent:
    """Takes every SummaryWriter call and writes nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def confusion_image(matrix: list[list[int]], cell: int = 16) -> np.ndarray:
    """The row-normalised confusion matrix as an HWC uint8 heat map (white = 0, dark blue = 1)."""
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    low, high = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    colours = (low + rates[..., None] * (high - low)).astype(np.uint8)
    return np.kron(colours, np.ones((cell, cell, 1), dtype=np.uint8))


def confusion_markdown(matrix: list[list[int]], class_names: list[str]) -> str:
    """The confusion matrix as a Markdown table for TensorBoard's text dashboard (rows = true class)."""
    header = "| true \\ predicted | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| **{name}** | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(class_names, matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])
