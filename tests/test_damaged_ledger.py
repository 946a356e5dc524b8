"""Ledger lines of the wrong shape, written into a real results.jsonl: every reader (the daemon, train.py,
`--summarize`, retention) warns once per bad line and goes on, and each step whose record was lost is
evaluated again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_results
from tests.conftest import SHORT_RUN

pytestmark = pytest.mark.slow

BAD = "is not an evaluation record"


def damage(train_dir: TrainDir) -> None:
    """Steps 80, 120 and 160 lose their records: as a bare number, without a step, with the step a string;
    then a line with `step` null and one that is not UTF-8."""
    lines = train_dir.results.read_bytes().splitlines()
    by_step = {json.loads(line)["step"]: line for line in lines}
    record = json.loads(by_step[160])
    damaged = [
        by_step[40],
        b"80",
        json.dumps({k: v for k, v in json.loads(by_step[120]).items() if k != "step"}).encode(),
        json.dumps(record | {"step": "160"}).encode(),
        json.dumps(record | {"step": None}).encode(),
        b'{"step": 200, "status": "ok", "file": "\xff\xfe"}',
        by_step[200],
    ]
    train_dir.results.write_bytes(b"\n".join(damaged) + b"\n")


def test_damaged_ledger_lines_are_skipped_with_a_warning_and_their_steps_evaluated_again(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    root = str(train_dir.root)
    trainer = start("train.py", "--train-dir", root, *SHORT_RUN)  # checkpoints 40, 80, ..., 200: all kept (5)
    assert trainer.wait() == 0, trainer.output()
    evaluator = start("eval.py", "--train-dir", root, "--idle-timeout", "30")
    assert evaluator.wait() == 0, evaluator.output()
    assert [r.step for r in read_results(train_dir.results)] == [40, 80, 120, 160, 200]
    damage(train_dir)

    summary = start("eval.py", "--summarize", root)
    assert summary.wait() == 0, summary.output()
    assert "Traceback" not in summary.output() and summary.output().count(BAD) == 4, summary.output()
    assert "1 train_dir(s)" in summary.output()

    # train.py resumes (its ledger reader feeds retention and eval_lag), one more checkpoint, 240.
    resumed = start("train.py", "--train-dir", root, "--set", "train.steps=240")
    assert resumed.wait() == 0, resumed.output()
    assert "Traceback" not in resumed.output() and resumed.output().count(BAD) == 4, resumed.output()
    assert resumed.output().count("is not a JSON record") == 1, resumed.output()

    daemon = start("eval.py", "--train-dir", root, "--idle-timeout", "30")
    assert daemon.wait() == 0, daemon.output()
    assert "Traceback" not in daemon.output() and daemon.output().count(BAD) == 4, daemon.output()
    results = read_results(train_dir.results)
    assert sorted(r.step for r in results) == [40, 80, 120, 160, 200, 240], "a lost step was not evaluated again"
    assert all(r.status == "ok" for r in results)
