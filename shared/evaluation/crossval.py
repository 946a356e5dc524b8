"""Cross-validation results: each fold's best evaluated checkpoint, summarised as mean and standard
deviation per metric (`eval.py --summarize runs/exp`, or `runs/exp/fold-*`, and launch.py --folds at the end)."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import UsageError
from shared.protocol import numbers
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_results
from shared.protocol.results import best_of

FOLD_RE = re.compile(r"^fold-(\d+)$")


def fold_folder(train_dir: Path, fold: int) -> Path:
    """Where `launch.py --folds K` puts fold `fold`'s own train_dir."""
    return train_dir / f"fold-{fold}"


def train_dirs(folders: list[Path]) -> list[Path]:
    """The folders as given, except that a folder launch.py --folds filled (fold-<i> train_dirs, no config.yaml
    of its own) stands for its folds, in fold order."""
    found: list[Path] = []
    for folder in folders:
        is_folds = folder.is_dir() and not TrainDir(folder).config.exists()
        folds = sorted((int(m[1]), p) for p in folder.iterdir() if (m := FOLD_RE.match(p.name))) if is_folds else []
        found += [path for _, path in folds] or [folder]
    return found


@dataclass
class Summary:
    metric: str  # eval.best_metric, which chose each fold's record
    steps: list[tuple[str, int]]  # (train_dir, the step of its best record), in order
    values: dict[str, list[float]]  # metric -> one value per train_dir, in order

    def as_dict(self) -> dict[str, Any]:
        stats = {name: {"mean": statistics.fmean(v), "std": _std(v)} for name, v in self.values.items()}
        folds = [{"train_dir": folder, "step": step} for folder, step in self.steps]
        return {"best_metric": self.metric, "folds": folds, "metrics": stats}

    def table(self) -> str:
        lines = [f"{len(self.steps)} train_dir(s), each at its best checkpoint by {self.metric}:"]
        lines += [f"  {folder}: step {step}" for folder, step in self.steps]
        lines += [f"  {name:<16} {statistics.fmean(v):.4f} ± {_std(v):.4f}" for name, v in self.values.items()]
        return "\n".join(lines)


def _std(values: list[float]) -> float:
    """The sample standard deviation (n - 1), 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(folders: list[Path]) -> Summary:
    """Each train_dir's best record (by its own eval.best_metric), summarised per metric.

    A folder that is not a train_dir or has no successful evaluation is a UsageError naming it.
    """
    from shared.tasks.loading import load_config  # the task's classes, hence torch: only when summarizing

    steps: list[tuple[str, int]] = []
    values: dict[str, list[float]] = {}
    metric = ""
    for folder in train_dirs(folders):
        train_dir = TrainDir(folder)
        if not train_dir.config.is_file():
            raise UsageError(
                f"--summarize {folder}: not a train_dir (no config.yaml) nor a folder of fold-<i> train_dirs; "
                "give train.py's --train-dir, or launch.py's with --folds"
            )
        options = load_config(train_dir.config, follow_links=False).eval
        best = best_of(read_results(train_dir.results), options.best_metric, options.best_higher_is_better)
        if best is None:
            raise UsageError(f"--summarize {folder}: no evaluated checkpoint in {train_dir.results}; run eval.py first")
        metric = metric or options.best_metric
        steps.append((str(folder), best.step))
        for name, value in best.metrics.items():
            values.setdefault(name, []).append(value)
    return Summary(metric, steps, values)


def print_summary(folders: list[Path], as_json: bool) -> None:
    summary = summarize(folders)
    print(numbers.dumps(summary.as_dict()) if as_json else summary.table())
