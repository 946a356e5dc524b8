"""Claim files: several evaluators on one train_dir share its checkpoints, each evaluated by exactly one.

An evaluator claims a step by creating `eval/claims/ckpt-<step>.claim` with O_CREAT|O_EXCL (atomic on
local file systems and NFSv3+), holding who claimed it. While it works it refreshes the file's mtime, so
a claim whose owner died goes quiet: it is *stale* when its owner is on this host (same hostname and pid
namespace) and its pid is gone, or when this evaluator has seen it unchanged (same claim, same mtime) for
the claim timeout by its own monotonic clock (another host, or a pid reused). No two hosts' clocks are
ever compared: an mtime is only compared with the same file's earlier mtime. A stale claim is taken over
race-free: the taker creates (O_EXCL) a marker named after the claim it judged, which only one taker can
create, checks that the claim is still the one it judged, and only then replaces it. No hard link or
symlink is needed.

A claim lives until the step is in the ledger (the recording evaluator removes it), so a step whose
result waits to be recorded stays claimed; `Claims.try_claim` callers must re-check the ledger after a
claim succeeds, since a step may have been recorded and its claim removed since they last looked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.protocol.files import (
    RECORD_BYTES,
    NotAFile,
    create_once,
    make_folder,
    open_nofollow,
    open_regular,
    read_file,
)

log = logging.getLogger(__name__)


# What an evaluator killed mid-claim leaves beside the claims: a claim's temp (killed before linking it into
# place) and a takeover's marker (killed before removing it), each named after its claim.
CLAIM_TEMP_RE = re.compile(r"^\.(ckpt-\d{9}\.claim)\.[0-9a-f]{32}\.tmp$")
TOMB_RE = re.compile(r"^\.(ckpt-\d{9}\.claim)\.([0-9a-f]{32}|\d+-\d+)\.old$")


def claim_name(step: int) -> str:
    return f"ckpt-{step:09d}.claim"


def claim_step(name: str) -> int | None:
    """The step of a claim file's name, or None for any other name (tombstones included)."""
    if name.startswith("ckpt-") and name.endswith(".claim") and name[5:-6].isdigit():
        return int(name[5:-6])
    return None


def this_evaluator() -> str:
    """The id an evaluator signs its claims and records with: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says: who claimed the step, and a token naming this very claim."""

    host: str
    pid: int
    started: float
    evaluator: str
    pid_namespace: str = ""
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @staticmethod
    def read(path: Path) -> ClaimInfo | None:
        return ClaimInfo.parse(read_file(path, RECORD_BYTES))

    @staticmethod
    def parse(data: bytes) -> ClaimInfo | None:
        """The claim's content, or None while it is still empty (its O_EXCL create just happened) or unreadable."""
        try:
            return ClaimInfo(**json.loads(data))
        except (ValueError, TypeError):
            return None


def _pid_namespace() -> str:
    """Which pids this process sees (containers on one host share a hostname only if told to)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Silence:
    """How long files have stayed unchanged, by this process's own monotonic clock.

    A file written on another host carries that host's (or the file server's) clock in its mtime, which may
    be minutes off ours; so an mtime is only ever compared with the same file's mtime at an earlier look."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[object, float]] = {}  # name -> (what was seen, when first seen so)

    def of(self, name: str, seen: object) -> float:
        """Seconds since `name` was first seen as `seen` (0 now if it was seen otherwise, or never)."""
        now = time.monotonic()
        before, since = self._since.get(name, (None, now))
        if before != seen:
            since = now
        self._since[name] = (seen, since)
        return now - since

    def forget_all_but(self, names: list[str]) -> None:
        """Drop what was seen of files no longer there, so the memory stays a handful of entries."""
        present = set(names)
        self._since = {name: seen for name, seen in self._since.items() if name in present}


class Claims:
    """The claims folder as one evaluator sees it: claiming, keeping claims fresh, and taking over stale ones."""

    def __init__(self, folder: Path, timeout: float, evaluator: str | None = None) -> None:
        self.folder, self.timeout = folder, timeout
        self.host, self.pid_namespace = socket.gethostname(), _pid_namespace()
        self.evaluator = evaluator or this_evaluator()
        self.silence = Silence()
        make_folder(folder)

    def path(self, step: int) -> Path:
        return self.folder / claim_name(step)

    def claimed_steps(self) -> set[int]:
        """Steps with a claim file: those being evaluated or waiting to be recorded (a handful, not all)."""
        names = os.listdir(self.folder)
        self.silence.forget_all_but(names)
        return {step for name in names if (step := claim_step(name)) is not None}

    def try_claim(self, step: int) -> bool:
        """Claim `step` for this evaluator: create its claim, or take over a stale one. False if someone holds it."""
        if self._create(step):
            return True
        return self._take_over(step) and self._create(step)

    def release(self, step: int) -> None:
        """Remove the claim (done: recorded; or given up without a result, so another may take it at once)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(step).unlink()

    def remove_abandoned(self) -> None:
        """Remove what killed evaluators left: a claim's temp once its writer is judged gone (as a claim
        is: a dead pid here, else silence for the timeout), and a takeover's marker once the claim it is
        named after is gone or replaced, since no taker can win with it then."""
        for name in os.listdir(self.folder):
            path = self.folder / name
            if CLAIM_TEMP_RE.match(name):
                seen = _Seen.look(path)
                abandoned = seen is not None and self._stale(seen) is not None
            elif tomb := TOMB_RE.match(name):
                claim = _Seen.look(self.folder / tomb[1])
                abandoned = claim is None or claim.name() != tomb[2]
            else:
                continue
            if abandoned:
                path.unlink(missing_ok=True)

    def stale_reason(self, step: int) -> str | None:
        """Why the claim on `step` is stale, or None while its owner is working (or it is gone)."""
        seen = _Seen.look(self.path(step))
        return None if seen is None else self._stale(seen)

    def _stale(self, seen: _Seen) -> str | None:
        if seen.planted:
            return "it is not a claim file (a link or a FIFO planted there)"
        info = seen.info
        same_pids = info is not None and (info.host, info.pid_namespace) == (self.host, self.pid_namespace)
        if info and same_pids and info.pid != os.getpid() and not _pid_alive(info.pid):
            return f"{info.evaluator} is dead"
        silent = self.silence.of(seen.path.name, seen)
        if silent > self.timeout:
            owner = info.evaluator if info else "its owner"
            return f"{owner} has been silent for {silent:.0f}s by this evaluator's clock"
        return None

    @contextlib.contextmanager
    def kept_fresh(self, step: int) -> Iterator[None]:
        """Refresh the claim's mtime while the block runs, so others see its owner is alive."""
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(self.timeout / 4):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.path(step), follow_symlinks=False)

        thread = threading.Thread(target=refresh, name=f"claim-{step}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _create(self, step: int) -> bool:
        """Write the claim under a name of its own (O_CREAT|O_EXCL), then link it onto the claim's name,
        which fails if that exists: a claim is never seen empty, so one whose owner was killed while
        claiming is judged by its pid at once, not by the timeout."""
        info = ClaimInfo(self.host, os.getpid(), time.time(), self.evaluator, self.pid_namespace)
        path = self.path(step)
        return create_once(path, json.dumps(asdict(info)).encode(), path.with_name(f".{path.name}.{info.token}.tmp"))

    def _take_over(self, step: int) -> bool:
        """Remove a stale claim on `step`, if this evaluator is the one taker that wins it."""
        path = self.path(step)
        seen = _Seen.look(path)
        if seen is None:
            return True  # gone meanwhile: free to create
        reason = self._stale(seen)
        if reason is None:
            return False
        # Only one taker can create this name, derived from the claim judged stale (its token, inode and mtime);
        # no longer than the claim's own temp name (`.old` as `.tmp`), so a path that fits a claim fits its tomb.
        tomb = self.folder / f".{path.name}.{seen.name()}.old"
        try:
            os.close(open_nofollow(tomb, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            # Another evaluator is taking it over right now, or died doing so: then its tomb stays unchanged.
            with contextlib.suppress(FileNotFoundError):
                if self.silence.of(tomb.name, os.stat(tomb).st_ino) > self.timeout:
                    tomb.unlink()
            return False
        try:
            now = _Seen.look(path)
            if now is None:
                return True  # another taker removed it (its own claim may be on the way): try to create
            if now != seen:
                return False  # a fresh claim made since we judged, or its owner refreshed it: leave it
            path.unlink(missing_ok=True)  # only this tomb's holder removes the claim it is named after
        finally:
            tomb.unlink(missing_ok=True)
        log.warning("step %d: taking over its claim (%s)", step, reason)
        return True


@dataclass(frozen=True)
class _Seen:
    """One look at a claim file: its content and which file it is (inode and mtime tell a new one apart)."""

    path: Path
    info: ClaimInfo | None
    inode: int
    mtime_ns: int
    planted: bool = False  # not a regular file (a symlink, a FIFO): no evaluator made it

    @staticmethod
    def look(path: Path) -> _Seen | None:
        """Never follows a link nor blocks on a FIFO planted as a claim: such a file is seen as `planted`."""
        try:
            with open(open_regular(path), "rb") as f:
                stat = os.fstat(f.fileno())
                data = f.read(RECORD_BYTES)
        except NotAFile:
            with contextlib.suppress(FileNotFoundError):
                stat = os.lstat(path)
                return _Seen(path, None, stat.st_ino, stat.st_mtime_ns, planted=True)
            return None
        except FileNotFoundError:
            return None
        return _Seen(path, ClaimInfo.parse(data), stat.st_ino, stat.st_mtime_ns)

    def name(self) -> str:
        return self.info.token if self.info else f"{self.inode}-{self.mtime_ns}"
