"""The README's commands as a newcomer runs them: in a fresh `git clone` of this checkout's committed HEAD
(no `runs/`, nothing left over), `make demo` as CI runs it, then in the same clone the quick start's lines as
written, read from README.md itself (the training cut short); and every shell command it shows naming the
venv's programs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import HANG_GUARD, ROOT, SHORT_RUN, fetch_json, system_tool, tensorboard_url, wait_until

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
VENV_BIN = ".venv/bin/"
# What the quick start's training may be cut to here: the README's own command, with fewer steps (two
# checkpoints: the `best` line then chooses between them).
SHORT = [*SHORT_RUN[2:], "--set", "train.steps=40", "--set", "checkpoint.every_steps=20"]
# make's own variables from the make that may be running these tests (`make test`), and the Makefile's
# settings: the clone's make must run as a newcomer's does.
MAKE_SETTINGS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV", "PYTHON", "DEMO_DIR", "PORT", "TORCH", "TORCH_INDEX")


def bash_blocks(markdown: str) -> list[list[str]]:
    """The command lines of each ```bash block (comments dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def quick_start() -> list[list[str]]:
    section = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (block,) = bash_blocks(section)
    return [shlex.split(line) for line in block]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `git clone` of this checkout (its committed HEAD) whose .venv is the one running these tests: the
    set-up `make` would do is done (and measured in the README), the rest is as a newcomer finds it. One for
    the module: `make demo` runs first in it (the test is marked `long`), then the quick start, in its own
    train_dir beside the demo's, as a newcomer would go on."""
    clone = tmp_path_factory.mktemp("fresh") / "trainval"
    subprocess.run([system_tool("git"), "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=HANG_GUARD)
    (clone / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    assert not (clone / "runs").exists()
    return clone


def test_every_readme_command_runs_in_a_fresh_shell() -> None:
    """Nothing is activated: each command is `make ...` or names a program in .venv/bin."""
    for block in bash_blocks(README):
        for line in block:
            program = shlex.split(line)[0]
            assert program == "make" or program.startswith(VENV_BIN), line


@pytest.mark.long
def test_make_demo_works_on_a_fresh_clone(clone: Path) -> None:
    """The first command: `make demo` as CI runs it (CI=true: no TensorBoard left serving), on the shipped
    configs/digits.yaml, keeping its promise (the best checkpoint's validation accuracy >= 0.98) and leaving
    the clone as it was apart from the ignored runs/. `-o .venv/.installed`: the venv is set up already."""
    env = {name: value for name, value in os.environ.items() if name not in MAKE_SETTINGS} | {"CI": "true"}
    demo = subprocess.run(
        [system_tool("make"), "-o", ".venv/.installed", "demo"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    shipped = yaml.safe_load((clone / "configs" / "digits.yaml").read_text())
    every = shipped["train"]["steps"] // shipped["checkpoint"]["every_steps"]  # every checkpoint, evaluated
    assert f"\nEvaluated {every} checkpoints; the best one:\n" in demo.stdout, demo.stdout
    accuracy = re.search(r"^  accuracy\s+([\d.]+)$", demo.stdout, flags=re.MULTILINE)
    assert accuracy and float(accuracy.group(1)) >= 0.98, demo.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout


def test_the_quick_start_trains_evaluates_and_serves_on_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    """The quick start's lines as written, in the fresh clone after `make demo` (the demo's test showed the
    first launch there making runs/ itself); the training cut short, and TensorBoard on a free port (the
    README's 6006 may serve something else here)."""
    launch, best, tensorboard = quick_start()
    assert launch[:2] == [f"{VENV_BIN}python", "launch.py"] and best[:3] == [
        f"{VENV_BIN}python",
        "eval.py",
        "--train-dir",
    ]
    assert tensorboard[0] == f"{VENV_BIN}tensorboard"

    launched = subprocess.run([*launch, *SHORT], cwd=clone, capture_output=True, text=True, timeout=HANG_GUARD)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "every checkpoint is evaluated; best checkpoint" in launched.stdout

    table = subprocess.run(best, cwd=clone, capture_output=True, text=True, timeout=HANG_GUARD)
    assert table.returncode == 0 and "accuracy" in table.stdout, table.stdout + table.stderr

    log = tmp_path / "tensorboard.log"
    with open(log, "wb") as out:
        served = subprocess.Popen([*tensorboard, "--port", "0"], cwd=clone, stdout=out, stderr=out)
    try:
        url = tensorboard_url(log)
        wait_until(lambda: sorted(fetch_json(f"{url}/data/runs")) == ["eval", "train"], 60, "both runs served")
    finally:
        served.kill()
        served.wait()
