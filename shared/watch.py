"""Waking the evaluator when something it waits for appears in the train_dir.

Events are hints, never the truth: a wake-up (or the periodic timeout) only makes the caller rescan
the checkpoints folder. Checkpoints arrive by rename, so the moved event is the one that means
"complete"; a created event can fire before the writer is done (watchdog #586) and is ignored for
checkpoints. inotify sees nothing on NFS/CIFS or across Docker Desktop bind mounts: use polling there.
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
        if event.is_directory:
            return
        path = Path(event.dest_path if event.event_type == "moved" else event.src_path)
        arrived = event.event_type in ("moved", "closed") or (event.event_type == "created" and path in self.markers)
        is_checkpoint = path.parent == self.train_dir.checkpoints and checkpoint_step(path) is not None
        if arrived and (is_checkpoint or path in self.markers):
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
