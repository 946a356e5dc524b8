"""The folders a process writes into must stay the ones it started with.

A train_dir, `eval/` or `checkpoints/` removed or renamed under a running process would otherwise go
unnoticed (open files keep working, and a later mkdir -p makes a new, empty folder under the old name)
or end in a traceback. Each process checks its folders by identity (device and inode) at every turn of
its loop, before it writes, and stops with one line naming the one that vanished: exit 1, nothing
written elsewhere; run the same command once the folder is back, and it resumes.
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
