"""Hostile files in a train_dir, made for real: FIFOs and links to /dev/zero planted where train.py and eval.py
read (config.yaml, an event file, the ledger, an outcome, a claim, the lock), and config files that would run
code, take the memory or the stack (a task naming an installed module, a YAML alias bomb, deep nesting). Each
is refused with one line and exit code 2, before it can hang the process or run anything."""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.protocol.claims import claim_name
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.protocol.outcomes import outcome_name
from tests.conftest import SHORT_RUN, Proc, finished_run
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

TRAIN = [*SHORT_RUN, "--set", "train.steps=40", "--set", "checkpoint.every_steps=20", "--device", "cpu"]
# A hang guard: each refusal comes at start, seconds after the imports; a FIFO opened to read blocks for good.
REFUSAL_GUARD = 300


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> TrainDir:
    """One finished and evaluated train_dir (checkpoints at 20 and 40), copied by each test."""
    return finished_run(tmp_path_factory.mktemp("evaluated"), warm_scripts, TRAIN, evaluate=True)


def copy_of(train_dir: TrainDir, root: Path) -> TrainDir:
    shutil.copytree(train_dir.root, root, symlinks=True)
    return TrainDir(root)


def event_file(run: Path) -> Path:
    return next(path for path in sorted(run.iterdir()) if "tfevents" in path.name)


def plant(path: Path, kind: str) -> None:
    """A FIFO, or a symlink to /dev/zero, at `path` in place of whatever was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


def one_line_refusal(proc: Proc, script: str, path: Path) -> str:
    code = proc.wait(REFUSAL_GUARD)
    output = proc.output()
    last = output.strip().splitlines()[-1]
    assert code == 2, output
    assert last.startswith(f"{script}: error: {path}"), output
    assert "Traceback" not in output
    return last


# (script, the file planted, what the process must do to reach it)
PLANTED = [
    ("train.py", "config.yaml", "resume"),
    ("train.py", "train/events", "resume"),
    ("train.py", ".train.lock", "resume"),
    ("train.py", "eval/results.jsonl", "train on"),
    ("eval.py", "config.yaml", "evaluate"),
    ("eval.py", "eval/events", "evaluate"),
    ("eval.py", "eval/results.jsonl", "evaluate"),
    ("eval.py", f"eval/pending/{outcome_name(20)}", "evaluate afresh"),
    ("eval.py", f"eval/claims/{claim_name(20)}", "take over"),
]


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
@pytest.mark.parametrize(("script", "planted", "then"), PLANTED)
def test_a_fifo_or_dev_zero_link_planted_in_the_train_dir_is_refused_without_hanging(
    tmp_path: Path, evaluated: TrainDir, start: Callable[..., Proc], script: str, planted: str, then: str, kind: str
) -> None:
    train_dir = copy_of(evaluated, tmp_path / "run")
    if then in ("evaluate afresh", "take over"):  # an outcome or claim is read only for a step not recorded yet
        shutil.rmtree(train_dir.eval_run)
    path = train_dir.root / planted
    if planted.endswith("/events"):
        path = event_file(path.parent)
    plant(path, kind)
    args = ["--set", "train.steps=60"] if then == "train on" else []
    proc = start(script, "--train-dir", str(train_dir.root), *args)
    if then == "take over":  # a claim no evaluator made is stale at once: removed (never read), and step 20 done
        assert proc.wait(REFUSAL_GUARD) == 0, proc.output()
        assert "step 20: taking over its claim (it is not a claim file" in proc.output()
        assert [r["step"] for r in read_records(train_dir.results)] == [20, 40] and not path.exists()
        return
    last = one_line_refusal(proc, script, path)
    assert ("is a symbolic link" in last) if kind == "devzero" else ("is a FIFO" in last), last
    assert path.is_fifo() if kind == "fifo" else path.is_symlink(), "the planted file was replaced"


def test_a_huge_config_is_refused_before_it_is_read(tmp_path: Path, start: Callable[..., Proc]) -> None:
    config = tmp_path / "huge.yaml"
    with open(config, "wb") as f:
        f.truncate(1 << 30)  # a sparse GiB: costs no disk
    proc = start("train.py", "--train-dir", str(tmp_path / "run"), "--config", str(config))
    last = one_line_refusal(proc, "train.py", config)
    assert "1,073,741,824 bytes, more than the 1,048,576" in last
    assert not (tmp_path / "run").exists()


# -- Untrusted config files ---------------------------------------------------------------------------------


def alias_bomb(path: Path) -> None:
    """The billion laughs: 9 levels of 9 aliases, a few hundred bytes that expand to 9**9 strings."""
    lines, previous = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600


def deep(path: Path) -> None:
    path.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (alias_bomb, "expands to more than 100,000 values through its aliases"),
        (deep, "nests deeper than 32 levels"),
    ],
)
@pytest.mark.parametrize("command", ["train.py --config", "eval.py", "eval.py --summarize"])
def test_an_alias_bomb_or_deep_nesting_is_one_line(
    tmp_path: Path, start: Callable[..., Proc], write: Callable[[Path], None], says: str, command: str
) -> None:
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    write(train_dir.config)
    script, *flag = command.split()
    if flag == ["--config"]:
        args = ["--train-dir", str(tmp_path / "other"), "--config", str(train_dir.config)]
    elif flag == ["--summarize"]:
        args = ["--summarize", str(train_dir.root)]
    else:
        args = ["--train-dir", str(train_dir.root)]
    proc = start(script, *args)
    assert proc.wait(REFUSAL_GUARD) == 2, proc.output()
    last = proc.output().strip().splitlines()[-1]
    assert last.startswith(f"{script}: error: config file {train_dir.config} {says}"), proc.output()
    assert "Traceback" not in proc.output() and "MemoryError" not in proc.output()


MARKER_MODULE = "trainval_test_import_marker"


@pytest.fixture
def installed_module_with_a_side_effect(tmp_path: Path) -> Iterator[Path]:
    """A harmless module installed in this interpreter's site-packages, as pip puts a one-module package
    there: importing it writes a marker file. Removed again after the test."""
    marker = tmp_path / "imported"
    module = Path(sysconfig.get_paths()["purelib"]) / f"{MARKER_MODULE}.py"
    module.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    yield marker
    module.unlink()
    for compiled in (module.parent / "__pycache__").glob(f"{MARKER_MODULE}.*.pyc"):
        compiled.unlink()


@pytest.mark.parametrize("command", ["train.py --config", "eval.py", "eval.py --summarize"])
def test_a_config_naming_an_installed_module_does_not_import_it(
    tmp_path: Path, start: Callable[..., Proc], installed_module_with_a_side_effect: Path, command: str
) -> None:
    """The task is checked before its module is imported: the module's code never runs, unless the user
    allows its package (TRAINVAL_TASK_PACKAGES), which shows the marker is written whenever it is imported."""
    marker = installed_module_with_a_side_effect
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    train_dir.config.write_text(f"task: {MARKER_MODULE}:Task\n")
    script, *flag = command.split()
    args = {
        "--config": ["--train-dir", str(tmp_path / "other"), "--config", str(train_dir.config)],
        "--summarize": ["--summarize", str(train_dir.root)],
    }.get(flag[0] if flag else "", ["--train-dir", str(train_dir.root)])
    proc = start(script, *args, cold=True)  # a fresh interpreter: nothing imported before
    assert proc.wait(REFUSAL_GUARD) == 2, proc.output()
    last = proc.output().strip().splitlines()[-1]
    assert last.startswith(f"{script}: error: task: module {MARKER_MODULE!r} is "), last
    assert "site-packages" in last and f"TRAINVAL_TASK_PACKAGES={MARKER_MODULE}" in last, last
    assert not marker.exists(), "the module named by the config was imported"

    allowed = start(script, *args, env={"TRAINVAL_TASK_PACKAGES": MARKER_MODULE})
    assert allowed.wait(REFUSAL_GUARD) == 2, allowed.output()
    assert f"task: no Task in {MARKER_MODULE}" in allowed.output(), allowed.output()
    assert marker.read_text() == "imported"


def test_antigravity_named_as_the_task_never_opens_a_browser(tmp_path: Path, start: Callable[..., Proc]) -> None:
    """The issue's own case: `task: antigravity:X` ran $BROWSER at import. BROWSER here is a script that
    writes a marker, so the test would see it run; the refusal comes first."""
    marker, browser = tmp_path / "browser-ran", tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    browser.chmod(0o755)
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    train_dir.config.write_text("task: antigravity:X\n")
    proc = start("eval.py", "--train-dir", str(train_dir.root), env={"BROWSER": str(browser)})
    assert proc.wait(REFUSAL_GUARD) == 2, proc.output()
    last = proc.output().strip().splitlines()[-1]
    assert last.startswith("eval.py: error: task: module 'antigravity' is ") and "antigravity.py" in last, last
    assert not marker.exists()
