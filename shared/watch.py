"""Waking the evaluator when something it waits for appears in the train_dir.

Events are hints, never the truth: a wake-up (or the periodic timeout) only makes the caller rescan
the checkpoints folder. Temp files never wake it. A created event can fire before its writer is done
(watchdog #586), but train.py only ever renames complete files onto `ckpt-*.pt` names, so any event
for such a name means a complete checkpoint. inotify sees nothing on NFS/CIFS or across Docker Desktop
bind mounts: use polling there. A sharded checkpoint is a folder renamed into place: a directory event.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from shared.layout import TrainDir, checkpoint_step


class _WakeOnArrival(FileSystemEventHandler):
    def __init__(self, train_dir: TrainDir, wake: threading.Event) -> None:
        self.train_dir, self.wake = train_dir, wake
        self.markers = {train_dir.config, train_dir.finished}

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = Path(event.dest_path if event.event_type == "moved" else event.src_path)
        # A final checkpoint name only ever appears by rename, so even a created event for it (what a
        # polling observer reports for a write + rename between two polls) means it is complete.
        is_checkpoint = path.parent == self.train_dir.checkpoints and checkpoint_step(path) is not None
        if event.is_directory and not is_checkpoint:
            return
        if event.event_type in ("created", "moved", "closed") and (is_checkpoint or path in self.markers):
            self.wake.set()


class CheckpointWatcher:
    """Watch a train_dir (recursively) with watchdog's native observer, or by polling every `poll_secs`."""

    def __init__(self, train_dir: TrainDir, poll_secs: float | None = None) -> None:
        self.train_dir = train_dir
        self._wake = threading.Event()
        self._observer: BaseObserver = PollingObserver(timeout=poll_secs) if poll_secs else Observer()
        self._observer.schedule(_WakeOnArrival(train_dir, self._wake), str(train_dir.root), recursive=True)

    def __enter__(self) -> CheckpointWatcher:
        self._observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
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
        woken = self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def wake(self) -> None:
        self._wake.set()
