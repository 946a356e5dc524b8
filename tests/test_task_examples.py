"""docs/tasks.md's three examples, as written there: the classifier is tests/custom_task.py (which other
tests train), and the regression and the language model are written out from the page and trained and
evaluated by train.py and the eval.py daemon."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shared.config import read_yaml
from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "tasks.md"


def code_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the page, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```$", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)


def named_files() -> dict[str, str]:
    """The blocks whose first line names their file (`# sine_task.py`), by that name."""
    named = {}
    for _, text in code_blocks():
        first = text.split("\n", 1)[0]
        if re.fullmatch(r"# [\w.]+\.(py|yaml)", first):
            named[first[2:]] = text
    return named


def test_the_pages_classifier_is_the_tested_custom_task() -> None:
    python = [text for language, text in code_blocks() if language == "python"]
    assert python[0] == (ROOT / "tests" / "custom_task.py").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "metric", "good_enough"),
    [
        pytest.param("sine.yaml", "r2", lambda value: value > 0.8, id="regression"),
        pytest.param("lines.yaml", "perplexity", lambda value: value < 6, id="language-model"),
    ],
)
def test_a_pages_example_trains_and_evaluates(tmp_path: Path, start, config: str, metric: str, good_enough) -> None:
    for name, text in named_files().items():
        (tmp_path / name).write_text(text)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), "--config", str(tmp_path / config), env=env)
    assert trainer.wait() == 0, trainer.output()
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), env=env)
    assert evaluator.wait() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert records and all(r["status"] == "ok" for r in records), records
    assert good_enough(records[-1]["metrics"][metric]), records[-1]["metrics"]
    assert read_best(train_dir)["metric"] == metric, "the task's best_metric chooses best/ (the config names none)"
    assert read_yaml(train_dir.config)["train"]["early_stop"]["metric"] == metric
