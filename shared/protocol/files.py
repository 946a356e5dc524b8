"""Safe file writes in a folder others can write to: a reader sees the old file, the whole new one, or
nothing, never part; and no write goes through a symlink this process did not create.

Every write opens its file with O_NOFOLLOW (a planted link is refused, not followed), and temp files
with O_CREAT|O_EXCL after removing a stale one (unlink removes a link, never its target). Appends are
whole or raise, and a line cut short earlier (a full disk, a crash) is cut off before the next one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.errors import UsageError

log = logging.getLogger(__name__)


RECORD_BYTES = 1 << 16  # the most a small record trainval writes (a claim, a lock's pid, a heartbeat) can hold


class NotAFile(UsageError):
    """A path where a file is read that is not a regular file (a FIFO, a device) or is too big to be one of ours."""


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError of a call on a descriptor (write, fsync, ftruncate) names no file; raised in this block, it
    names `path`, so its one line says which file (an ext4 error remounts the disk read-only under open files:
    EROFS from a write, or from the fsync after a rename)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (the rename itself is atomic but lives in the folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink at `path` with one line (UsageError) instead of writing through it,
    and anything but a regular file (NotAFile) without blocking on it: opening a FIFO to write waits for a
    reader forever."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)  # no effect on a regular file
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UsageError(
                f"{path} is a symbolic link; trainval never writes through a link it did not create: remove it"
            ) from None
        if err.errno == errno.ENXIO:  # a FIFO with no reader, or a socket
            raise NotAFile(
                f"{path} is a FIFO or a socket, not a regular file; remove it (trainval did not make it)"
            ) from None
        raise
    _check_regular(fd, path)
    return fd


def _check_regular(fd: int, path: Path) -> None:
    """NotAFile (the descriptor closed) unless `fd` is open on a regular file."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFile(f"{path} is {_kind(mode)}, not a regular file; remove it (trainval did not make it)")


def open_regular(path: Path, follow_links: bool = False) -> int:
    """A descriptor open for reading on the regular file at `path` (see read_file), or NotAFile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotAFile(
                f"{path} is a symbolic link; trainval never reads a link it did not create: remove it"
            ) from None
        raise
    _check_regular(fd, path)
    return fd


def read_file(path: Path, limit: int | None = None, follow_links: bool = False) -> bytes:
    """The bytes of the regular file at `path`, read so that nothing planted there can hang or flood the
    reader: opened without blocking (a FIFO would wait for a writer forever, past SIGTERM), not through a
    symlink unless `follow_links` (a link to /dev/zero never ends), checked to be a regular file, and at
    most `limit` bytes. NotAFile (one line) otherwise; FileNotFoundError when it is missing."""
    fd = open_regular(path, follow_links)
    try:
        info = os.fstat(fd)
        if limit is not None and info.st_size > limit:
            raise NotAFile(
                f"{path} is {info.st_size:,} bytes, more than the {limit:,} such a file can hold; remove or shorten it"
            )
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:  # grown since the fstat
                raise NotAFile(f"{path} grew past {limit:,} bytes while it was read; remove or shorten it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def touch(path: Path) -> None:
    """Create `path` empty if it is missing; never through a link."""
    os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT))


def make_folder(path: Path) -> None:
    """mkdir -p, refusing a folder that is a symlink: what is written there would land wherever it points."""
    path.mkdir(parents=True, exist_ok=True)
    refuse_linked_folders(path)


def refuse_linked_folders(*folders: Path) -> None:
    """UsageError for the first of `folders` that is a symlink (a folder may be missing: it is made later)."""
    for folder in folders:
        if folder.is_symlink():
            raise UsageError(
                f"{folder} is a symbolic link; trainval writes only into real folders of the train_dir: "
                "replace it with a folder (move its contents in)"
            )


def remove_tree(path: Path) -> None:
    """Remove a folder we wrote, or a symlink planted under its name (the link only, never its target)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def create_temp(path: Path) -> int:
    """A new, empty file at `path` for writing: a stale one (or a link under its name) is removed first."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a short write (full disk, signal) is continued, an error raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def atomic_file(path: Path, temp: Path | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """Write to `temp` (same folder), fsync, then os.replace onto `path` and fsync the folder.

    If the body raises, the temp file is removed and `path` is untouched. Without `durable` nothing is
    fsynced: still whole or absent for every reader while the machine runs, but a power loss may lose or cut
    the file; only for signs of life (the heartbeat) and files whose reader detects that and redoes the work
    (outcome files).
    """
    temp = temp or path.with_name(f".{path.name}.tmp")
    try:
        with naming(temp), open(create_temp(temp), "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync a new file (O_EXCL, never through a link): inside a temp folder that is then renamed
    into place whole, or as the temp that create_once links into place."""
    fd = create_temp(path)
    try:
        with naming(path):
            write_all(fd, data)
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_file(path, durable=durable) as f:
        f.write(data)


# What link(2) fails with on a file system that has no hard links: vfat, exFAT, SMB, gcsfuse, s3fs.
NO_LINKS = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


def create_once(path: Path, data: bytes, temp: Path | None = None) -> bool:
    """Create `path` holding `data`, unless it exists (then False): written under a name of its own
    (`temp`, O_CREAT|O_EXCL) and hard-linked into place, which fails if `path` exists, so of racing
    creators exactly one wins and no reader ever sees the file empty or half written.

    Where the file system has no hard links, `path` itself is created with O_CREAT|O_EXCL and then written:
    still one winner, but a reader may see it empty for a moment, or for good if its writer died then
    (claims allow for that: an unreadable claim is judged by its silence)."""
    temp = temp or path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_synced(temp, data)
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in NO_LINKS:
            raise
        return _create_in_place(path, data)
    finally:  # also when the disk is full: no temp is left behind
        temp.unlink(missing_ok=True)
    return True


def _create_in_place(path: Path, data: bytes) -> bool:
    """create_once without a link: O_EXCL on the name itself, then the data, fsynced (or nothing left)."""
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    try:
        with naming(path):
            write_all(fd, data)
            os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return True


def append_line(path: Path, line: str) -> None:
    """Append one whole line and fsync it, or raise with the file as it was (one writer per file).

    A last line cut short before (a full disk, a crash mid-write) is cut off first, so the new line is
    never glued onto it. A write that fails part way is undone.
    """
    fd = open_nofollow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        with naming(path):
            start = _repair_last_line(fd, path)
            try:
                write_all(fd, (line.rstrip("\n") + "\n").encode())
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
    finally:
        os.close(fd)


def repair_last_line(path: Path) -> None:
    """Cut off a last line without its newline (a write cut short), if `path` exists."""
    try:
        fd = open_nofollow(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        with naming(path):
            _repair_last_line(fd, path)
    finally:
        os.close(fd)


def _repair_last_line(fd: int, path: Path) -> int:
    """Truncate the file open as `fd` after its last newline; the size it then has."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end, chunk = size, 1 << 16
    while end > 0:  # find the last newline, reading backwards
        start = max(0, end - chunk)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    log.warning("%s: cutting off its last %d byte(s), a line cut short by an earlier write", path, size - end)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return end


# The lock descriptors this process holds. A forked child (a DataLoader worker) closes its copies at once:
# an flock lasts while any process holds a descriptor of it, so a child that outlives a SIGKILLed parent by
# seconds would otherwise keep the lock, and refuse the restart, that long.
_held_locks: set[int] = set()


def _drop_inherited_locks() -> None:
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def try_lock(path: Path, wait: bool = False) -> int | None:
    """An open descriptor holding an advisory lock on `path` (with our pid written in it), or None if
    another process holds it (with `wait`, wait for it instead); give it back with release_lock. The lock
    lasts until then or until the process dies (not its forked children): the kernel releases it, so a
    crash never leaves a stale lock behind."""
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _held_locks.add(fd)
    with contextlib.suppress(OSError):  # the pid only helps a person; a full disk must not cost the lock
        os.ftruncate(fd, 0)
        write_all(fd, str(os.getpid()).encode())
    return fd


def release_lock(fd: int) -> None:
    _held_locks.discard(fd)
    os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False) -> Iterator[int]:
    """Hold an advisory lock on `path` for the block (its descriptor), or raise UsageError if another process
    holds it (with `wait`, wait for it instead: a short critical section several processes take turns in)."""
    fd = try_lock(path, wait)
    if fd is None:
        holder = read_file(path, RECORD_BYTES).decode(errors="replace").strip() or "unknown"
        raise UsageError(f"{what} (pid {holder}); stop that process or choose another --train-dir")
    try:
        yield fd
    finally:
        release_lock(fd)
