"""The status view, `eval.py --train-dir D --status [--json]`: each step once, as ok, failed, skipped or pending,
the lag behind training and the best so far; it reads only, before any evaluator ran, on a read-only train_dir
and while train.py writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.evaluation.status import Status, read_status, steps_text, suites_of, table
from shared.protocol.claims import Claims
from shared.protocol.layout import TrainDir, weights_name
from shared.protocol.ledger import read_records
from shared.protocol.outcomes import write_outcome
from shared.protocol.results import EvalResult, SplitResult
from shared.tasks.loading import load_config
from tests.conftest import SHORT_RUN, Proc, process_starter, wait_while_progressing
from tests.test_odd_paths import file_modes_apply, without_file_overrides
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

# A checkpoint every 10 steps; no evaluator while the first 40 steps train, so max_to_keep=2 retires 10 and 20
# unrecorded (train.py's notes make them skipped).
TRAIN = [*SHORT_RUN, "--set", "checkpoint.every_steps=10", "--set", "checkpoint.max_to_keep=2", "--device", "cpu"]
GUARD = 300  # a hang guard for runs of seconds


# A second suite, added by eval.py's --set alone (so only its eval-sparse/suite.json tells of it), ranked by loss.
SPARSE = ["--suite", "sparse", "--set", "suites.sparse.every_steps=20", "--set", "suites.sparse.best_metric=loss"]


@dataclass(frozen=True)
class Runs:
    # eval: 10, 20 skipped, 30 failed, 40 ok, 50 evaluated not recorded, 60 being evaluated; sparse: every 20th
    train_dir: TrainDir
    never_evaluated: TrainDir  # checkpoints 30 and 40, 10 and 20 retired; no evaluator ever ran
    seen_while_written: list[Status]  # read again and again while both suites' evaluators, then train.py, ran


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Runs:
    folder = tmp_path_factory.mktemp("status")
    train_dir, never = TrainDir(folder / "run"), TrainDir(folder / "never-evaluated")
    root = str(train_dir.root)
    with process_starter(folder, warm_scripts) as start:
        first = start("train.py", "--train-dir", root, *TRAIN, "--set", "train.steps=40")
        assert first.wait() == 0, first.output()
        shutil.copytree(train_dir.root, never.root, symlinks=True)
        for path in (train_dir.checkpoint(30), train_dir.checkpoints / weights_name(30)):
            os.truncate(path, path.stat().st_size // 2)  # a real corrupt checkpoint: step 30 fails
        seen: list[Status] = []
        for suite in ([], SPARSE):
            read_until_exit(train_dir, start("eval.py", "--train-dir", root, *suite), seen)
        more = ["--set", "train.steps=60", "--set", "checkpoint.max_to_keep=3"]
        read_until_exit(train_dir, start("train.py", "--train-dir", root, *more), seen)
    # An evaluator (this process) claims 50 and 60, and has evaluated 50: its outcome waits to be recorded.
    claims = Claims(train_dir.claims, timeout=60)
    assert claims.try_claim(50) and claims.try_claim(60)
    scores = {"val": SplitResult({"accuracy": 0.5, "loss": 1.0})}
    write_outcome(train_dir.pending, EvalResult(50, "checkpoints/ckpt-000000050.pt", "ok", splits=scores))
    return Runs(train_dir, never, seen)


def read_until_exit(train_dir: TrainDir, writer: Proc, seen: list[Status]) -> None:
    """Read the status (into `seen`) as often as it takes to read it, until the writer exits (0). The suites
    are looked up at each reading: a suite's daemon makes its folder as it starts."""
    config = load_config(train_dir.config)

    def exited() -> bool:
        seen.append(read_status(train_dir, suites_of(train_dir, config)))
        return writer.popen.poll() is not None

    wait_while_progressing(exited, writer, "a writer of the train_dir to exit")
    assert writer.wait() == 0, writer.output()


def run_status(start: Callable[..., Proc], train_dir: TrainDir, *args: str, **how: object) -> str:
    proc = start("eval.py", "--train-dir", str(train_dir.root), "--status", *args, **how)
    assert proc.wait(GUARD) == 0, proc.output()
    return proc.output()


def table_made_here(train_dir: TrainDir) -> str:
    """The table `eval.py --status` prints, made in this process (no start-up to pay)."""
    return table(read_status(train_dir, suites_of(train_dir, load_config(train_dir.config))))


def test_the_status_shows_each_step_once_with_the_lag_and_the_best(runs: Runs, start: Callable[..., Proc]) -> None:
    train_dir, sparse = runs.train_dir, runs.train_dir.for_suite("sparse")
    best = next(r for r in read_records(train_dir.results) if r["step"] == 40)["metrics"]["accuracy"]
    least_loss = next(r for r in read_records(sparse.results) if r["step"] == 40)["metrics"]["loss"]
    mtimes = {step: train_dir.checkpoint(step).stat().st_mtime for step in (40, 60)}
    lag_seconds = round(mtimes[60] - mtimes[40], 1)
    assert json.loads(run_status(start, train_dir, "--json")) == {
        "train_dir": str(train_dir.root),
        "finished": {"step": 60},
        "newest_checkpoint": 60,
        "suites": {
            "eval": {
                "schedule": {"policy": "all", "every_steps": 1, "start_step": 0},
                "ok": [40],
                "failed": [30],
                "skipped": [10, 20],
                "pending": [50, 60],
                "claimed": [60],
                "evaluated": [50],
                "newest_checkpoint": 60,
                "newest_recorded": 40,
                "lag": {"steps": 20, "seconds": lag_seconds},
                "best": {"metric": "accuracy", "step": 40, "value": best},
            },
            "sparse": {
                "schedule": {"policy": "all", "every_steps": 20, "start_step": 0},
                "ok": [40],
                "failed": [],
                "skipped": [20],
                "pending": [60],
                "claimed": [],
                "evaluated": [],
                "newest_checkpoint": 60,
                "newest_recorded": 40,
                "lag": {"steps": 20, "seconds": lag_seconds},
                "best": {"metric": "loss", "step": 40, "value": least_loss},
            },
        },
    }
    assert run_status(start, train_dir).splitlines() == [
        f"{train_dir.root}: newest checkpoint 60; training finished at step 60",
        "",
        "eval (policy all)",
        "  ok           1  40",
        "  failed       1  30",
        "  skipped      2  10, 20",
        "  pending      2  50, 60 (being evaluated: 60; evaluated, not yet recorded: 50)",
        f"  lag      20 steps (recorded up to 40; 60 committed {lag_seconds:.1f} s after it)",
        f"  best     accuracy {best:.4f} at step 40",
        "",
        "sparse (policy all, every_steps 20)",
        "  ok           1  40",
        "  failed       0  none",
        "  skipped      1  20",
        "  pending      1  60",
        f"  lag      20 steps (recorded up to 40; 60 committed {lag_seconds:.1f} s after it)",
        f"  best     loss {least_loss:.4f} at step 40",
    ]


def tree(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under `folder`: its mode, mtime and content (a folder's: its names), hashed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = str(sorted(os.listdir(path))).encode() if path.is_dir() else path.read_bytes()
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, hashlib.sha256(content).hexdigest())
    return found


def test_the_status_reads_a_read_only_train_dir_and_changes_nothing(
    runs: Runs, tmp_path: Path, start: Callable[..., Proc]
) -> None:
    """Real file modes (chmod a-w, enforced on a root without its override capabilities): a write would fail."""
    file_modes_apply(tmp_path / "probe")
    root = runs.train_dir.root
    expected = table_made_here(runs.train_dir) + "\n"
    before = tree(root)
    modes = {path: path.lstat().st_mode for path in (root, *root.rglob("*")) if not path.is_symlink()}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    try:
        output = run_status(start, runs.train_dir, preexec_fn=without_file_overrides)
    finally:
        for path, mode in reversed(modes.items()):
            path.chmod(mode)
    assert output == expected
    assert tree(root) == before, "it wrote into the train_dir"


def test_before_any_evaluator_every_committed_checkpoint_is_pending(runs: Runs, start: Callable[..., Proc]) -> None:
    never = runs.never_evaluated
    before = tree(never.root)
    status = json.loads(run_status(start, never, "--json"))["suites"]["eval"]
    assert {key: status[key] for key in ("ok", "failed", "skipped", "pending", "lag", "best")} == {
        "ok": [],
        "failed": [],
        "skipped": [10, 20],  # retired by train.py: the first evaluator records them as skipped
        "pending": [30, 40],
        "lag": {"steps": None, "seconds": None},
        "best": None,
    }
    assert "  lag      nothing recorded yet; newest checkpoint 40" in table_made_here(never).splitlines()
    assert tree(never.root) == before and not never.eval_run.exists()


KINDS = ("ok", "failed", "skipped", "pending")


def test_the_status_read_while_the_train_dir_is_written_never_loses_a_step(runs: Runs) -> None:
    """Each reading holds each step of a suite once; every step a reading showed is in every later one, and a
    recorded one as it was: pending steps may be recorded meanwhile, and checkpoints committed appear."""
    assert len(runs.seen_while_written) > 3
    shown: dict[tuple[str, int], str] = {}
    for status in runs.seen_while_written:
        lists = [(suite.suite.name, name, getattr(suite, name)) for suite in status.suites for name in KINDS]
        now = {(suite, step): name for suite, name, steps in lists for step in steps}
        assert sum(len(steps) for *_, steps in lists) == len(now)
        assert shown.keys() <= now.keys(), (shown, now)
        assert all(now[key] == name for key, name in shown.items() if name != "pending"), (shown, now)
        shown = now
    steps = {10: "skipped", 20: "skipped", 30: "failed", 40: "ok", 50: "pending", 60: "pending"}
    assert shown == {("eval", step): name for step, name in steps.items()} | {
        ("sparse", 20): "skipped",
        ("sparse", 40): "ok",
        ("sparse", 60): "pending",
    }


def test_steps_text_keeps_long_lists_short() -> None:
    assert steps_text([]) == "none"
    assert steps_text([10, 20]) == "10, 20"
    assert steps_text([10, 20, 30, 40, 70, 75, 90]) == "10-40 every 10, 70, 75, 90"
    assert steps_text([5, 10, 15, 100, 200, 300]) == "5-15 every 5, 100-300 every 100"
