"""The scripts keep to their side of the layers (pyproject.toml's [tool.importlinter] checks shared/, whose
packages import-linter can take; train.py and eval.py are modules, so their imports are read here)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported(script: str) -> set[str]:
    tree = ast.parse((ROOT / script).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize(("script", "other_side"), [("train.py", "shared.evaluation"), ("eval.py", "shared.training")])
def test_the_train_side_and_the_eval_side_never_import_each_other(script: str, other_side: str) -> None:
    crossing = sorted(name for name in imported(script) if name == other_side or name.startswith(other_side + "."))
    assert not crossing, f"{script} imports the other side: {crossing}; move what both use below them"


# Imported only by the runs that use them: each costs an evaluator's start up to seconds of CPU, which on a
# shared host comes out of the trainer's (docs/benchmarks.md, issue 24).
NOT_AT_START = ("sklearn", "scipy", "pandas", "matplotlib", "mlflow", "transformers", "datasets")


# Runs a script as `python SCRIPT ARGS...` would, then prints the top-level packages it imported.
RUN_AND_LIST = """
import atexit, runpy, sys
atexit.register(lambda: print(" ".join(sorted({name.split(".")[0] for name in sys.modules}))))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def imports_of(script: str, *args: str) -> set[str]:
    """The top-level packages `python SCRIPT ARGS...` imported."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True
    )
    return set(done.stdout.split("\n")[-2].split())


def test_launch_py_imports_no_torch_and_eval_py_starts_without_what_digits_does_not_use(tmp_path: Path) -> None:
    assert "torch" not in imports_of("launch.py", "--help")
    train_dir = tmp_path / "run"
    train_dir.mkdir()
    shutil.copy(ROOT / "configs" / "digits.yaml", train_dir / "config.yaml")  # a train_dir before its first checkpoint
    started = imports_of("eval.py", "--train-dir", str(train_dir), "--idle-timeout", "0")
    assert {"torch", "PIL"} <= started, "the evaluator ran up to its first wait (the recorder draws its frame)"
    assert not started & set(NOT_AT_START)
