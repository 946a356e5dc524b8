"""train.py and eval.py as two real processes on one train_dir, read back with TensorBoard's own loader."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from shared.checkpoints.store import list_checkpoints
from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records, read_results
from shared.protocol.results import best_of
from tests.conftest import SHORT_RUN, scalar_points, wait_for_watching, wait_until, wait_while_progressing

pytestmark = [pytest.mark.slow, pytest.mark.long]

EVAL_TAGS = ("loss", "accuracy", "f1_macro", "precision_macro", "recall_macro")


def json_line(output: str) -> dict:
    """The one JSON object `eval.py --json` printed, among any log lines."""
    (line,) = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(line)


def assert_one_point_per_evaluated_step(train_dir: TrainDir) -> list[dict]:
    """Every checkpoint step has one ledger record, and each ok record exactly one point per eval tag."""
    records = read_records(train_dir.results)
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate ledger records: {Counter(steps)}"
    ok = {r["step"]: r for r in records if r["status"] == "ok"}
    assert ok, "no checkpoint was evaluated"
    for tag in EVAL_TAGS:
        points = scalar_points(train_dir.eval_run, tag)
        assert [step for step, _ in points] == sorted(ok), f"eval/{tag} steps differ from the ledger's"
        for step, value in points:
            assert value == pytest.approx(ok[step]["metrics"][tag], rel=1e-6)
    return records


def test_train_and_eval_daemon_end_to_end(tmp_path: Path, start) -> None:
    """Both processes start cold, as users start them (the other tests mostly start them warm)."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120", cold=True)
    wait_for_watching(evaluator)
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, cold=True)
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()

    finished = json.loads(train_dir.finished.read_text())
    assert finished["step"] == 200
    saved = [c.step for c in list_checkpoints(train_dir.checkpoints)]
    records = assert_one_point_per_evaluated_step(train_dir)
    assert [r["step"] for r in records] == [40, 80, 120, 160, 200]
    assert all(r["status"] == "ok" for r in records), records
    assert set(saved) <= {r["step"] for r in records}

    train_loss = scalar_points(train_dir.train_run, "loss")
    assert [step for step, _ in train_loss] == list(range(10, 201, 10))
    for tag in ("learning_rate", "grad_norm", "examples_per_sec"):
        assert [step for step, _ in scalar_points(train_dir.train_run, tag)] == list(range(10, 201, 10)), tag

    best = read_best(train_dir)
    assert best["value"] == max(r["metrics"]["accuracy"] for r in records)
    assert best["step"] == best_of(read_results(train_dir.results), "accuracy", higher_is_better=True).step
    assert [p.name for p in train_dir.root.glob(".best-*")] == [f".best-{best['step']:09d}"]  # earlier ones removed

    # Ad hoc evaluation of a checkpoint gives exactly the numbers the daemon recorded for its step.
    adhoc = start(
        "eval.py", "--train-dir", str(train_dir.root), "--checkpoint", str(train_dir.checkpoint(200)), "--json"
    )
    assert adhoc.wait() == 0, adhoc.output()
    printed = json_line(adhoc.output())
    assert printed["metrics"] == records[-1]["metrics"]
    assert printed["per_class_f1"] == records[-1]["per_class_f1"]
    assert not train_dir.adhoc_run.exists(), "ad hoc evaluation wrote summaries without --write-summary"


def test_a_waiting_daemon_says_so_every_30s_and_never_creates_the_train_dir(tmp_path: Path, start) -> None:
    """eval.py started before train.py created its train_dir and the train_dir's parent (a fresh clone's runs/,
    or a mistyped path): it names the absolute path and that the folder did not exist, says so again 30 s
    later, creates nothing, and follows train.py once train.py creates the folder."""
    train_dir = TrainDir(tmp_path / "runs" / "run")
    (tmp_path / "elsewhere").mkdir()
    evaluator = start("eval.py", "--train-dir", str(tmp_path / "elsewhere" / ".." / "runs" / "run"))  # resolved
    hint = re.compile(r"waiting for train.py to create (\S+) \(waited (\d+)s; it did not exist when eval.py started")
    hints = lambda: hint.findall(evaluator.output())  # noqa: E731
    wait_until(lambda: len(hints()) >= 2, 120, "a second hint, 30 s after the first (a timer, not CPU work)")
    (first, at_first), (again, at_again) = hints()[:2]
    assert first == again == str(train_dir.root.resolve()) and int(at_again) - int(at_first) >= 30, hints()
    assert not train_dir.root.parent.exists(), "the waiting daemon created the train_dir's parent"

    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=40")
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()
    assert [r["step"] for r in read_records(train_dir.results)] == [40]


def tree(folder: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every entry under `folder`, itself included: a file's bytes, and each one's mode and mtime (a folder's
    changes when an entry is made or removed in it, even one removed again)."""
    entries = {}
    for path in (folder, *folder.rglob("*")):
        stat = path.lstat()
        entries[str(path.relative_to(folder))] = (
            path.read_bytes() if path.is_file() else None,
            stat.st_mode,
            stat.st_mtime_ns,
        )
    return entries


def test_a_daemon_writes_nothing_into_a_folder_that_is_not_a_train_dir(tmp_path: Path, start) -> None:
    """eval.py pointed at an existing folder without config.yaml (`--train-dir docs`, say) says what it waits
    for and writes nothing there: stopped, it leaves the folder as it was, byte for byte."""
    folder = tmp_path / "docs"
    (folder / "images").mkdir(parents=True)
    (folder / "usage.md").write_text("# not a train_dir\n")
    before = tree(folder)
    evaluator = start("eval.py", "--train-dir", str(folder))
    wait_for_watching(evaluator)
    evaluator.signal(signal.SIGTERM)
    assert evaluator.wait() == 0, evaluator.output()
    assert f"waiting for train.py to write {folder.resolve() / 'config.yaml'}" in evaluator.output()
    assert tree(folder) == before


def test_eval_killed_and_restarted_gives_one_point_per_step(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    run = [*SHORT_RUN, "--set", "train.steps=600", "--set", "checkpoint.every_steps=20"]
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120")
    wait_for_watching(evaluator)
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    wait_while_progressing(lambda: len(read_records(train_dir.results)) >= 3, trainer, "three evaluations")
    evaluator.signal(signal.SIGKILL)
    evaluator.wait()
    restarted = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120")
    assert trainer.wait() == 0, trainer.output()
    assert restarted.wait() == 0, restarted.output()
    records = assert_one_point_per_evaluated_step(train_dir)
    assert records[-1]["step"] == 600
    assert "step(s) already recorded" in restarted.output()


def test_train_resumes_after_sigterm_and_continues_the_step_count(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    run = [*SHORT_RUN, "--set", "train.steps=100000", "--set", "checkpoint.every_steps=50"]
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    wait_while_progressing(lambda: len(list_checkpoints(train_dir.checkpoints)) >= 2, trainer, "two checkpoints")
    trainer.signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.output()
    stopped_at = list_checkpoints(train_dir.checkpoints)[-1].step
    assert stopped_at >= 100
    assert not train_dir.finished.exists(), "an interrupted run must not say it finished"

    target = stopped_at + 60
    resumed = start("train.py", "--train-dir", str(train_dir.root), "--set", f"train.steps={target}")
    assert resumed.wait() == 0, resumed.output()
    assert f"resumed from ckpt-{stopped_at:09d}.pt" in resumed.output()
    assert "train.steps changed: 100000 -> " in resumed.output()
    assert json.loads(train_dir.finished.read_text())["step"] == target
    steps = [step for step, _ in scalar_points(train_dir.train_run, "loss")]
    assert steps == sorted(set(steps)), "train/loss has repeated or backward steps after the resume"
    assert steps[-1] == target - target % 10  # logged every 10 steps, through the resumed part


def test_training_a_finished_run_on_is_evaluated_to_its_new_end(tmp_path: Path, start) -> None:
    """ "Train more steps" on a finished and evaluated run. A plain daemon started before train.py takes the
    marker there for the end, exits 0 at once and says what to do; one given --after-finished (the marker's
    wall_time, as launch.py passes it) waits through train.py's removal of the marker, evaluates every new
    checkpoint and exits only at the new marker, so train.py, which waits for it (train.max_eval_lag=1),
    ends too."""
    train_dir = TrainDir(tmp_path / "run")
    run = [*SHORT_RUN, "--set", "train.steps=80", "--set", "train.max_eval_lag=1"]
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    assert trainer.wait_while_logging() == 0, trainer.output()
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait_while_logging() == 0, evaluator.output()
    assert [r["step"] for r in read_records(train_dir.results)] == [40, 80]
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait_while_logging() == 0, evaluator.output()
    assert "step 80: training finished and every checkpoint is evaluated; nothing was left to do" in evaluator.output()

    wall_time = json.loads(train_dir.finished.read_text())["wall_time"]
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--after-finished", repr(wall_time))
    following = lambda: "step(s) already recorded" in evaluator.output()  # noqa: E731
    wait_while_progressing(following, evaluator, "eval.py to follow the train_dir")
    more = ["--set", "train.steps=160", "--set", "checkpoint.every_steps=20"]  # 4 new: it waits for eval.py
    trainer = start("train.py", "--train-dir", str(train_dir.root), *more)
    assert trainer.wait_while_logging() == 0, trainer.output()
    assert "removed finished.json (step 80): training goes on to step 160" in trainer.output()
    assert evaluator.wait_while_logging() == 0, evaluator.output()
    assert "finished.json names step 160: training finished" in evaluator.output()
    assert [r["step"] for r in assert_one_point_per_evaluated_step(train_dir)] == [40, 80, 100, 120, 140, 160]


def test_resume_refuses_a_different_model_and_names_the_keys(tmp_path: Path, start) -> None:
    train_dir = tmp_path / "run"
    first = start("train.py", "--train-dir", str(train_dir), *SHORT_RUN, "--set", "train.steps=20")
    assert first.wait() == 0, first.output()
    different = ["--set", "model.channels=16", "--set", "data.split_seed=3"]
    changed = start("train.py", "--train-dir", str(train_dir), *SHORT_RUN, *different)
    assert changed.wait() == 2
    message = changed.output()
    assert "model.channels: 8 -> 16" in message and "data.split_seed: 0 -> 3" in message
    assert "Traceback" not in message


def test_a_second_trainer_on_the_same_train_dir_is_refused(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    first = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=100000")
    wait_while_progressing(
        lambda: bool(list_checkpoints(train_dir.checkpoints)), first, "the first trainer's checkpoint"
    )
    second = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN)
    assert second.wait() == 2
    assert "another train.py is already training" in second.output()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def test_a_users_own_task_by_dotted_path(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    config = tmp_path / "blobs.yaml"
    config.write_text(
        "task: tests.custom_task:BlobsTask\n"
        "model: {hidden: 16}\n"
        "data: {batch_size: 32, examples: 300}\n"
        "train: {steps: 60, lr: 0.01, warmup_steps: 5}\n"
        "checkpoint: {every_steps: 30}\n"
    )
    trainer = start("train.py", "--train-dir", str(train_dir.root), "--config", str(config))
    assert trainer.wait() == 0, trainer.output()
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == [30, 60]
    assert records[-1]["metrics"]["accuracy"] > 0.9
    assert len(records[-1]["per_class_f1"]) == 3
