"""Waking the evaluator when something it waits for appears in the train_dir.

Events are hints, never the truth: a wake-up (or the periodic timeout) only makes the caller rescan
the checkpoints folder. Temp files never wake it. A created event can fire before its writer is done
(watchdog #586), but train.py only ever renames complete files onto `ckpt-*.pt` names, so any event
for such a name means a complete checkpoint. inotify sees nothing on NFS/CIFS or across Docker Desktop
bind mounts: use polling there. A sharded checkpoint is a folder renamed into place: a directory event.

Another trainer's checkpoint (docs/foreign-runs.md) is complete by its format's own rule, often a file
written inside its folder last (HF's trainer_state.json): any event under a candidate's name wakes the
evaluator, and the watcher notes each candidate it finds complete then (`arrivals`), so one that its trainer
deletes before the next scan is still recorded as skipped.

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
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from shared.checkpoints.sources import TRAINVAL, CheckpointSource
from shared.errors import RunAborted
from shared.protocol.layout import TrainDir
from shared.protocol.outcomes import OUTCOME_RE

Names = re.Pattern[str] | Callable[[Path], object]  # what wakes the evaluator: a name matched, or a path a step


def _arrivals(train_dir: TrainDir, source: CheckpointSource) -> dict[Path, Names]:
    """Folders whose new names wake the evaluator: checkpoints, and outcomes for the recorder."""
    return {train_dir.checkpoints: source.step_of, train_dir.pending: OUTCOME_RE}


def _wakes(names: Names, path: Path) -> bool:
    return bool(names.match(path.name) if isinstance(names, re.Pattern) else names(path) is not None)


class _WakeOnArrival(FileSystemEventHandler):
    def __init__(self, train_dir: TrainDir, source: CheckpointSource, wake: threading.Event) -> None:
        self.wake, self.source, self.folder = wake, source, train_dir.checkpoints
        self.arrivals = _arrivals(train_dir, source)
        self.markers = {train_dir.config, train_dir.finished}
        self.completed: dict[int, str] = {}  # step -> name of each foreign candidate seen complete
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "moved", "closed"):
            return
        path = Path(event.dest_path if event.event_type == "moved" else event.src_path)
        # A final name only ever appears by rename, so even a created event for it means it is complete.
        names = self.arrivals.get(path.parent)
        if path in self.markers or (names is not None and _wakes(names, path)):
            self.wake.set()
        if not self.source.trainer_notes_deletions:
            self._note_completed(path)

    def _note_completed(self, path: Path) -> None:
        """A foreign checkpoint is completed by a write inside it or under its name: note it if complete now."""
        if not path.is_relative_to(self.folder) or path == self.folder:
            return
        name = path.relative_to(self.folder).parts[0]
        step = self.source.step_of(self.folder / name)
        if step is not None:
            self.wake.set()
            with self.lock:
                self.completed[step] = name


class FolderPoll:
    """One look at the train_dir per poll: which arrival names and markers are new since the last look, and
    (a foreign format's) which candidates became complete."""

    def __init__(self, train_dir: TrainDir, source: CheckpointSource) -> None:
        self.source, self.folder = source, train_dir.checkpoints
        self.arrivals = _arrivals(train_dir, source)
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
            new = {name for name in names - self.names[folder] if _wakes(pattern, folder / name)}
            asked_again = folder == self.folder and not self.source.named_when_complete  # until it is complete
            self.names[folder] = new | (self.names[folder] & names) if asked_again else names
            arrived |= bool(new)
        for marker in self.markers:
            exists = marker.exists()
            arrived |= exists and not self.present[marker]
            self.present[marker] = exists
        return arrived


class CheckpointWatcher:
    """Watch a train_dir (recursively) with watchdog's native observer, or by polling every `poll_secs`."""

    def __init__(
        self, train_dir: TrainDir, poll_secs: float | None = None, source: CheckpointSource = TRAINVAL
    ) -> None:
        self.train_dir, self.poll_secs, self.source = train_dir, poll_secs, source
        self._wake = threading.Event()
        self._observer: Observer | None = None
        self._poll: FolderPoll | None = None
        self._handler = _WakeOnArrival(train_dir, source, self._wake)

    def arrivals(self) -> dict[int, str]:
        """The foreign checkpoints (step -> name) the watcher saw complete (inotify only), gone since or not."""
        with self._handler.lock:
            return dict(self._handler.completed)

    def __enter__(self) -> CheckpointWatcher:
        if self.poll_secs:
            self._poll = FolderPoll(self.train_dir, self.source)
        else:
            try:  # inotify's instance and watch limits are met here, when creating and watching
                observer = Observer()
                for folder in {self.train_dir.root, self.train_dir.reads_within}:  # the results' and the source's
                    observer.schedule(self._handler, str(folder), recursive=True)
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
