"""The README's commands as a newcomer runs them: its quick start, read from README.md itself and run for
real (with a short training), and every shell command it shows naming the venv's programs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHORT_RUN, fetch_json, tensorboard_url, wait_until

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
VENV_BIN = ".venv/bin/"
# What the quick start's training may be cut to here: the README's own command, with fewer steps.
SHORT = SHORT_RUN[2:]


def bash_blocks(markdown: str) -> list[list[str]]:
    """The command lines of each ```bash block (comments dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in blocks]


def quick_start() -> list[list[str]]:
    section = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (block,) = bash_blocks(section)
    return [shlex.split(line) for line in block]


def test_every_readme_command_runs_in_a_fresh_shell() -> None:
    """Nothing is activated: each command is `make ...` or names a program in .venv/bin."""
    for block in bash_blocks(README):
        for line in block:
            program = shlex.split(line)[0]
            assert program == "make" or program.startswith(VENV_BIN), line


def here(argv: list[str], train_dir: Path) -> list[str]:
    """The README's command with this test's interpreter (its .venv may be elsewhere) and train_dir."""
    program = Path(sys.executable) if argv[0] == f"{VENV_BIN}python" else Path(sys.executable).with_name("tensorboard")
    assert argv[0].startswith(VENV_BIN) and program.exists(), argv
    return [str(program), *(str(train_dir) if arg == "runs/digits" else arg for arg in argv[1:])]


def test_the_quick_start_trains_evaluates_and_serves(tmp_path: Path) -> None:
    launch, best, tensorboard = quick_start()
    assert launch[1] == "launch.py" and best[1:3] == ["eval.py", "--train-dir"] and "--checkpoint" in best
    train_dir = tmp_path / "digits"

    launched = subprocess.run(
        [*here(launch, train_dir), "--port", "0", *SHORT], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "every checkpoint is evaluated; best checkpoint" in launched.stdout

    table = subprocess.run(here(best, train_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and "accuracy" in table.stdout, table.stdout + table.stderr

    log = tmp_path / "tensorboard.log"
    with open(log, "wb") as out:
        served = subprocess.Popen([*here(tensorboard, train_dir), "--port", "0"], cwd=ROOT, stdout=out, stderr=out)
    try:
        url = tensorboard_url(log)
        wait_until(lambda: sorted(fetch_json(f"{url}/data/runs")) == ["eval", "train"], 60, "both runs served")
    finally:
        served.kill()
        served.wait()
