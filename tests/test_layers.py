"""The scripts keep to their side of the layers (pyproject.toml's [tool.importlinter] checks shared/, whose
packages import-linter can take; train.py and eval.py are modules, so their imports are read here)."""

from __future__ import annotations

import ast
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
