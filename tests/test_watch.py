"""shared.evaluation.watch.CheckpointWatcher with real watchdog observers, native (inotify) and polling."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.checkpoints.store import list_checkpoints, save
from shared.evaluation.watch import CheckpointWatcher
from shared.protocol.files import write_atomic
from shared.protocol.layout import TrainDir
from tests.conftest import HANG_GUARD

WAKE_TIMEOUT = 5.0  # a wake-up that should come comes within this
QUIET = 0.5  # long enough for several polls (0.1 s) and for inotify to deliver


@pytest.fixture(params=[None, 0.1], ids=["native", "polling"])
def poll_secs(request: pytest.FixtureRequest) -> float | None:
    return request.param


@pytest.fixture
def train_dir(tmp_path: Path) -> TrainDir:
    return TrainDir(tmp_path / "run")


@pytest.fixture
def watcher(train_dir: TrainDir, poll_secs: float | None) -> Iterator[CheckpointWatcher]:
    train_dir.root.mkdir()
    with CheckpointWatcher(train_dir, poll_secs) as watcher:
        yield watcher


def _write_temp(train_dir: TrainDir, step: int) -> Path:
    """A checkpoint temp file, written the way store.save writes one (before its rename)."""
    temp = train_dir.checkpoints / f".ckpt-{step:09d}.pt.tmp"
    with open(temp, "wb") as f:
        torch.save({"format_version": 1, "step": step, "model": {"w": torch.zeros(50_000)}}, f)
    return temp


def test_wakes_on_checkpoint_renamed_into_place(train_dir: TrainDir, watcher: CheckpointWatcher) -> None:
    """os.replace of a temp onto `ckpt-<step>.pt` wakes the watcher (writing the temp did not)."""
    train_dir.checkpoints.mkdir()
    temp = _write_temp(train_dir, 100)
    assert not watcher.wait(QUIET)
    os.replace(temp, train_dir.checkpoint(100))
    assert watcher.wait(WAKE_TIMEOUT)


def test_temp_and_other_files_do_not_wake(train_dir: TrainDir, watcher: CheckpointWatcher) -> None:
    """A temp checkpoint being created and written (and unrelated files) never wake the evaluator."""
    train_dir.checkpoints.mkdir()
    temp = _write_temp(train_dir, 100)
    with open(temp, "ab") as f:  # written to again, as a large save is, in pieces
        f.write(b"\0" * 4096)
    (train_dir.checkpoints / "notes.txt").write_text("hello")
    (train_dir.root / "train").mkdir()
    (train_dir.root / "train" / "events.out.tfevents.1").write_bytes(b"x")
    assert not watcher.wait(QUIET)


@pytest.mark.parametrize("marker", ["finished", "config"])
def test_wakes_on_marker_written_atomically(train_dir: TrainDir, watcher: CheckpointWatcher, marker: str) -> None:
    """finished.json (no more checkpoints will come) and config.yaml wake the watcher when they arrive."""
    write_atomic(getattr(train_dir, marker), b'{"step": 100}\n')
    assert watcher.wait(WAKE_TIMEOUT)


def test_wakes_for_checkpoint_in_folder_created_after_start(train_dir: TrainDir, watcher: CheckpointWatcher) -> None:
    """The checkpoints folder may not exist when the evaluator starts: a checkpoint renamed into it later
    still wakes the watcher (the watch is recursive and picks up the new folder)."""
    assert not train_dir.checkpoints.exists()
    train_dir.checkpoints.mkdir()
    temp = _write_temp(train_dir, 100)
    assert not watcher.wait(QUIET)  # the new folder and the temp are not arrivals
    os.replace(temp, train_dir.checkpoint(100))
    assert watcher.wait(WAKE_TIMEOUT)


def test_wake_and_wait_reset(train_dir: TrainDir, watcher: CheckpointWatcher) -> None:
    """wake() makes the next wait return True at once; the wake-up is then used up."""
    watcher.wake()
    assert watcher.wait(WAKE_TIMEOUT)
    assert not watcher.wait(0.05)


@pytest.mark.parametrize(
    "poll_secs",
    [
        None,
        0.1,
    ],
    ids=["native", "polling"],
)
def test_wakes_on_each_real_save(train_dir: TrainDir, watcher: CheckpointWatcher) -> None:
    """Every store.save (temp, fsync, rename, all quicker than one poll) wakes the watcher."""
    for step in (100, 200, 300):
        save(train_dir, step, {"model": {"w": torch.zeros(10)}})
        assert watcher.wait(1.0), f"no wake-up for step {step}"


def test_checkpoints_present_before_start_are_found_by_the_scan(tmp_path: Path, poll_secs: float | None) -> None:
    """Checkpoints saved before the watcher started raise no event; the evaluator's scan finds them, in order."""
    train_dir = TrainDir(tmp_path / "run")
    for step in (300, 100, 200):
        save(train_dir, step, {"model": {"w": torch.zeros(10)}})
    _write_temp(train_dir, 400)  # a save cut short is not listed
    with CheckpointWatcher(train_dir, poll_secs) as watcher:
        assert not watcher.wait(QUIET)
        assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [100, 200, 300]


INOTIFY_AT_ITS_LIMIT = """
import os, resource, sys
from pathlib import Path
from shared.evaluation.watch import CheckpointWatcher
from shared.protocol.layout import TrainDir
from shared.errors import RunAborted

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:  # every descriptor this process may have, taken: inotify_init then fails as at its instance limit
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    with CheckpointWatcher(TrainDir(Path(sys.argv[1]))):
        print("watching")
except RunAborted as err:
    print(err)
"""


def test_a_watcher_at_the_inotify_limit_says_to_poll(train_dir: TrainDir) -> None:
    """A real EMFILE from inotify_init (watchdog: "inotify instance limit reached"), in a process whose
    descriptors are all taken; the system-wide inotify limits are left alone, as other processes share them."""
    train_dir.root.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", INOTIFY_AT_ITS_LIMIT, str(train_dir.root)],
        capture_output=True, text=True, timeout=HANG_GUARD, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cannot watch {train_dir.root} with inotify: inotify instance limit reached")
    assert "pass --poll 1 to poll instead" in done.stdout
