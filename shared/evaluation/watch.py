"""Waking the evaluator when something it waits for appears in the train_dir.

Events are hints, never the truth: a wake-up (or the periodic timeout) only makes the caller rescan
the checkpoints folder. Temp files never wake it. A created event can fire before its writer is done
(watchdog #586), but train.py only ever renames complete files onto `ckpt-*.pt` names, so any event
for such a name means a complete checkpoint. inotify sees nothing on NFS/CIFS or across Docker Desktop
bind mounts: use polling there. A sharded checkpoint is a folder renamed into place: a directory event.

Polling is our own, not watchdog's PollingObserver: that one stats every file under the train_dir on
each poll, which with thousands of checkpoints on NFS costs more than the poll interval. Ours lists the
two folders whose new names matter (checkpoints/, and eval/pending/ where other evaluators leave their
outcomes) and checks for two markers: no stat per file, and only names new since the last poll are
parsed, so a poll of a folder of 10,000 checkpoints costs a few milliseconds (bench/poll_cost.py).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from shared.errors import RunAborted
from shared.protocol.layout import CHECKPOINT_RE, TrainDir
from shared.protocol.outcomes import OUTCOME_RE


def _arrivals(train_dir: TrainDir) -> dict[Path, re.Pattern[str]]:
    """Folders whose new names wake the evaluator: committed checkpoints, and outcomes for the recorder."""
    return {train_dir.checkpoints: CHECKPOINT_RE, train_dir.pending: OUTCOME_RE}


class _WakeOnArrival(FileSystemEventHandler):
    def __init__(self, train_dir: TrainDir, wake: threading.Event) -> None:
        self.wake = wake
        self.arrivals = _arrivals(train_dir)
        self.markers = {train_dir.config, train_dir.finished}

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "moved", "closed"):
            return
        path = Path(event.dest_path if event.event_type == "moved" else event.src_path)
        # A final name only ever appears by rename, so even a created event for it means it is complete.
        pattern = self.arrivals.get(path.parent)
        if path in self.markers or (pattern is not None and pattern.match(path.name)):
            self.wake.set()


class FolderPoll:
    """One look at the train_dir per poll: which arrival names and markers are new since the last look."""

    def __init__(self, train_dir: TrainDir) -> None:
        self.arrivals = _arrivals(train_dir)
        self.markers = (train_dir.config, train_dir.finished)
        self.names: dict[Path, set[str]] = {folder: set() for folder in self.arrivals}
        self.present = {marker: False for marker in self.markers}
        self.look()

    def look(self) -> bool:
        """True if a checkpoint, an outcome or a marker appeared since the last look."""
        arrived = False
        for folder, pattern in self.arrivals.items():
            try:
                names = set(os.listdir(folder))
            except FileNotFoundError:
                names = set()
            arrived |= any(pattern.match(name) for name in names - self.names[folder])
            self.names[folder] = names
        for marker in self.markers:
            exists = marker.exists()
            arrived |= exists and not self.present[marker]
            self.present[marker] = exists
        return arrived


class CheckpointWatcher:
    """Watch a train_dir (recursively) with watchdog's native observer, or by polling every `poll_secs`."""

    def __init__(self, train_dir: TrainDir, poll_secs: float | None = None) -> None:
        self.train_dir, self.poll_secs = train_dir, poll_secs
        self._wake = threading.Event()
        self._observer: Observer | None = None
        self._poll: FolderPoll | None = None

    def __enter__(self) -> CheckpointWatcher:
        if self.poll_secs:
            self._poll = FolderPoll(self.train_dir)
        else:
            try:  # inotify's instance and watch limits are met here, when creating and watching
                observer = Observer()
                observer.schedule(_WakeOnArrival(self.train_dir, self._wake), str(self.train_dir.root), recursive=True)
                observer.start()
                self._observer = observer
            except OSError as err:
                if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOSPC):
                    raise
                raise RunAborted(
                    f"cannot watch {self.train_dir.root} with inotify: {err.strerror or err} (the limits are the "
                    "open-file limit and fs.inotify.max_user_instances / max_user_watches); pass --poll 1 to poll "
                    "instead, or raise the limit"
                ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._observer is None:
            return
        # watchdog's inotify emitter logs a spurious ERROR when an event races its shutdown.
        emitter_log = logging.getLogger("watchdog.observers.inotify")
        level = emitter_log.level
        emitter_log.setLevel(logging.CRITICAL)
        try:
            self._observer.stop()
            self._observer.join()
        finally:
            emitter_log.setLevel(level)

    def wait(self, timeout: float) -> bool:
        """Block until something arrived, `wake()` was called, or `timeout` passed; True if woken."""
        woken = self._poll_until(time.monotonic() + timeout) if self._poll else self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def _poll_until(self, deadline: float) -> bool:
        assert self._poll is not None and self.poll_secs
        while not self._wake.is_set():
            if self._poll.look():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.wait(min(self.poll_secs, remaining))
        return True

    def wake(self) -> None:
        self._wake.set()
