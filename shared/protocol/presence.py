"""The folders a process writes into must stay the ones it started with.

A train_dir, `eval/` or `checkpoints/` removed or renamed under a running process would otherwise go
unnoticed (open files keep working, and a later mkdir -p makes a new, empty folder under the old name)
or end in a traceback. Each process checks its folders by identity (device and inode) at every turn of
its loop, before it writes, and stops with one line naming the one that vanished: exit 1, nothing
written elsewhere; run the same command once the folder is back, and it resumes.

A train_dir removed and made anew (`rm -rf` while train.py starts, then a second train.py) holds a new
`.train.lock` that the second trainer locks: both would train in it. So the trainer also checks that the
lock file at the lock's path is the one it holds (fstat of its descriptor against stat of the path).
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import RunAborted


class FolderGuard:
    """Remembers each folder's identity once it exists; `check` raises RunAborted when one is gone or replaced."""

    def __init__(self, prog: str, *folders: Path) -> None:
        self.prog, self.folders = prog, folders
        self._identity: dict[Path, tuple[int, int]] = {}
        self._lock: tuple[Path, int] | None = None
        self.check()

    def hold_lock(self, path: Path, fd: int) -> None:
        """From now on `check` also raises when the file at `path` is no longer the one `fd` holds locked."""
        self._lock = (path, fd)
        self.check()

    def check(self) -> None:
        for folder in self.folders:
            try:
                stat = os.stat(folder)
                now = (stat.st_dev, stat.st_ino)
            except FileNotFoundError:
                now = None
            known = self._identity.setdefault(folder, now) if now is not None else self._identity.get(folder)
            if known is not None and now != known:
                raise RunAborted(
                    f"{folder} was removed or renamed while {self.prog} ran; nothing more is written there. "
                    "Put it back (or point --train-dir at where it went) and run the same command to resume"
                )
        if self._lock is not None:
            self._check_lock(*self._lock)

    def _check_lock(self, path: Path, fd: int) -> None:
        held = os.fstat(fd)
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != (held.st_dev, held.st_ino):
            raise RunAborted(
                f"{path.parent} was removed or replaced while {self.prog} ran (its {path.name} is no longer the one "
                f"this {self.prog} locked: another may be training there now); nothing more is written there. Leave "
                "the folder to that one, or put the old folder back and run the same command to resume"
            )
