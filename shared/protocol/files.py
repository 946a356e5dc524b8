"""Atomic, durable file writes: a reader sees the old file, the whole new one, or nothing; never part."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.runtime.errors import UsageError


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (the rename itself is atomic but lives in the folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, temp: Path | None = None) -> Iterator[BinaryIO]:
    """Write to `temp` (same folder), fsync, then os.replace onto `path` and fsync the folder.

    If the body raises, the temp file is removed and `path` is untouched.
    """
    temp = temp or path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def append_line(path: Path, line: str) -> None:
    """Append one whole line with a single write and fsync it (one writer per file; see results.py)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path, wait: bool = False) -> int | None:
    """An open descriptor holding an advisory lock on `path` (with our pid written in it), or None if
    another process holds it (with `wait`, wait for it instead). The lock lasts until the descriptor is
    closed or the process dies: the kernel releases it, so a crash never leaves a stale lock behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on `path` for the block, or raise UsageError if another process holds it
    (with `wait`, wait for it instead: a short critical section several processes take turns in)."""
    fd = try_lock(path, wait)
    if fd is None:
        holder = path.read_text(errors="replace").strip() or "unknown"
        raise UsageError(f"{what} (pid {holder}); stop that process or choose another --train-dir")
    try:
        yield
    finally:
        os.close(fd)
