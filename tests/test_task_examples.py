"""docs/tasks.md's examples, as written there: the classifier is tests/custom_task.py and the language model
tests/lines_task.py (which other tests train), and the regression, the language model and the Hugging Face
model are written out from the page into a user's own folder outside the checkout and trained and evaluated
there, as the page says: the checkout's train.py and eval.py run by their absolute paths from that folder,
which is how the task module is found."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from shared.config import read_yaml
from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.loading import task_class
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "tasks.md"
CHECKOUT = "~/trainval/"  # where the page has the checkout


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


def test_the_pages_classifier_and_language_model_are_the_tested_modules() -> None:
    python = [text for language, text in code_blocks() if language == "python"]
    assert python[0] == (ROOT / "tests" / "custom_task.py").read_text()
    assert named_files()["lines_task.py"] == (ROOT / "tests" / "lines_task.py").read_text()  # tests/resume_tasks.py


def commands_from_your_folder() -> list[list[str]]:
    """The page's block that runs its examples from the user's own folder: `cd`, train.py, eval.py."""
    block = re.search(
        r"^<!-- run by tests/test_task_examples.py -->\n```bash\n(.*?)^```$", PAGE.read_text(), re.M | re.S
    )
    return [shlex.split(line) for line in block.group(1).splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "metric", "good_enough"),
    [
        pytest.param("sine", "r2", lambda value: value > 0.8, id="regression"),
        pytest.param("lines", "perplexity", lambda value: value < 6, id="language-model"),
        pytest.param("hf_lines", "perplexity", lambda value: value < 12, id="hugging-face"),
    ],
)
def test_a_pages_example_trains_and_evaluates(tmp_path: Path, start, example: str, metric: str, good_enough) -> None:
    """As the page runs it: the checkout's train.py and eval.py by their paths, from the user's own folder
    outside the checkout (the page's files, nothing on PYTHONPATH), which is where the task module is found."""
    (cd, folder), *commands = commands_from_your_folder()
    assert cd == "cd" and [argv[:2] for argv in commands] == [
        [f"{CHECKOUT}.venv/bin/python", f"{CHECKOUT}{s}"] for s in ("train.py", "eval.py")
    ]
    mine = tmp_path / Path(folder).name
    mine.mkdir()
    for name, text in named_files().items():
        (mine / name).write_text(text)
    for argv in commands:
        script = str(ROOT / argv[1].removeprefix(CHECKOUT))
        proc = start(script, *(arg.replace("sine", example) for arg in argv[2:]), cwd=mine)
        assert proc.wait() == 0, proc.output()
    train_dir = TrainDir(mine / "runs" / example)
    records = read_records(train_dir.results)
    assert records and all(r["status"] == "ok" for r in records), records
    assert good_enough(records[-1]["metrics"][metric]), records[-1]["metrics"]
    assert read_best(train_dir)["metric"] == metric, "the task's best_metric chooses best/ (the config names none)"
    assert read_yaml(train_dir.config)["train"]["early_stop"]["metric"] == metric


def test_a_module_in_the_current_folder_never_shadows_an_installed_one(tmp_path: Path, monkeypatch) -> None:
    """The current folder is searched last: a task there is found, and a file there named like a module
    on the path (an installed package, here one on sys.path) does not replace it."""
    installed, mine = tmp_path / "site-packages", tmp_path / "my-project"
    installed.mkdir()
    mine.mkdir()
    (installed / "clash_zz.py").write_text("WHERE = 'installed'\n")
    (mine / "clash_zz.py").write_text("WHERE = 'the current folder'\n")
    (mine / "sine_task.py").write_text(named_files()["sine_task.py"] + "\nimport clash_zz\n")
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.chdir(mine)
    for name in ("clash_zz", "sine_task"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert task_class("sine_task:SineTask").__module__ == "sine_task"
    assert sys.modules["clash_zz"].WHERE == "installed"
    assert sys.path[-1] == str(mine)
