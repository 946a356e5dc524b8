"""The result of evaluating one checkpoint: one type from the evaluator to the outcome files, the ledger,
best/, train.py's feedback and retention, and the fold summary.

An `EvalResult` holds the step, its status (`ok`, `failed`, `skipped`), why when not ok, its timings,
the evaluator that made it and, when ok, each split's metrics by name (any names), in eval.splits
order: the first split is the one eval.best_metric scores. On disk it is a ledger line whose keys stay
as they always were: `metrics` (the first split's), `per_class_f1` (the first split's), `split_metrics`
(every split's), `step`, `file`, `status`, `wall_time`, `seconds`, `reason`, `evaluator`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.protocol.artifacts import Artifact, ConfusionMatrix, PerClass, numbered
from shared.protocol.numbers import finite, is_number, number

Status = Literal["ok", "failed", "skipped"]
STATUSES = ("ok", "failed", "skipped")
PER_CLASS_F1 = "per_class_f1"  # the artifact whose values the ledger keeps (the first split's), as it always did


class RecordError(ValueError):
    """A ledger line that is JSON but not a result (a bare number, no integer step, ...): the reason."""


def is_better(value: float, than: float, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    """Whether `value` improves on `than` by more than `min_delta` in the metric's direction (NaN never does)."""
    return value > than + min_delta if higher_is_better else value < than - min_delta


@dataclass
class SplitResult:
    """One split's scores: each scalar metric by name, and the small artifacts the task's metrics computed
    (a confusion matrix, per-class F1, binned PR curves), which the summaries draw. Artifacts travel in
    outcome files; a result read from the ledger has only its per-class F1."""

    metrics: dict[str, float]
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    @property
    def per_class_f1(self) -> list[float]:
        """The values of the `per_class_f1` artifact (a classifier's), which the ledger records."""
        found = self.artifacts.get(PER_CLASS_F1)
        return found.values if isinstance(found, PerClass) else []

    @property
    def confusion_matrix(self) -> list[list[int]]:
        found = self.artifacts.get("confusion_matrix")
        return found.counts if isinstance(found, ConfusionMatrix) else []


@dataclass
class EvalResult:
    step: int
    file: str  # the checkpoint, relative to the train_dir (it may be gone by now)
    status: Status
    # When and how long, and by whom: not part of what a result says about its checkpoint (left out of ==).
    wall_time: float = field(default=0.0, compare=False)
    seconds: float = field(default=0.0, compare=False)
    splits: dict[str, SplitResult] = field(default_factory=dict)  # in eval.splits order; empty unless ok
    reason: str = ""  # why, when failed or skipped
    evaluator: str = field(default="", compare=False)  # host:pid of the eval.py that made it

    @property
    def metrics(self) -> dict[str, float]:
        """The first split's metrics (empty unless ok)."""
        return next(iter(self.splits.values())).metrics if self.splits else {}

    def value(self, metric: str, split: str | None = None) -> float | None:
        """`metric` on `split` (default: the first split), or None when the result does not have it."""
        scores = self.splits.get(split) if split is not None else next(iter(self.splits.values()), None)
        return None if scores is None else scores.metrics.get(metric)

    def beats(self, other: EvalResult | None, metric: str, higher_is_better: bool) -> bool:
        """Better than `other` (None: no best yet) by the first split's `metric`; at an equal value the earlier
        step wins. A NaN or infinite value never beats anything (nothing compares better than NaN, so one
        would stay best for good), and any finite value beats one."""
        mine, theirs = self.value(metric), None if other is None else other.value(metric)
        if not finite(mine) or not finite(theirs):
            return finite(mine)
        if mine == theirs:
            return self.step < other.step
        return is_better(mine, theirs, higher_is_better)

    def to_record(self) -> dict[str, Any]:
        """The ledger line's fields."""
        first = next(iter(self.splits.values()), None)
        return {
            "step": self.step,
            "file": self.file,
            "status": self.status,
            "wall_time": self.wall_time,
            "seconds": self.seconds,
            "metrics": self.metrics,
            "per_class_f1": first.per_class_f1 if first else [],
            "split_metrics": {name: split.metrics for name, split in self.splits.items()},
            "reason": self.reason,
            "evaluator": self.evaluator,
        }

    @classmethod
    def from_record(cls, record: Any) -> EvalResult:
        """The result a ledger line holds; RecordError naming what is wrong when it is not one."""
        if not isinstance(record, dict):
            raise RecordError(f"a JSON {type(record).__name__}, not an object")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RecordError(f"its step {step!r} is not a non-negative integer")
        if record.get("status") not in STATUSES:
            raise RecordError(f"step {step}: its status {record.get('status')!r} is none of {', '.join(STATUSES)}")
        first, by_split = _scores(record.get("metrics", {}), step), record.get("split_metrics") or {}
        if not isinstance(by_split, dict):
            raise RecordError(f"step {step}: its split_metrics is not an object")
        splits = {name: _scores(scores, step) for name, scores in by_split.items()} or ({"val": first} if first else {})
        # JSON keeps the splits sorted by name: the first split is the one whose metrics are `metrics`
        # (compared as JSON, so that a NaN equals itself).
        primary = next((name for name, scores in splits.items() if _same(scores, first)), None)
        ordered = {name: SplitResult(splits[name]) for name in sorted(splits, key=lambda name: name != primary)}
        per_class = record.get("per_class_f1") or []
        if ordered and isinstance(per_class, list) and per_class:
            values = [number(v) for v in per_class if is_number(v)]
            next(iter(ordered.values())).artifacts[PER_CLASS_F1] = PerClass(numbered(len(values)), values)
        return cls(
            step,
            str(record.get("file", "")),
            record["status"],
            _number(record.get("wall_time")),
            _number(record.get("seconds")),
            ordered,
            str(record.get("reason", "")),
            str(record.get("evaluator", "")),
        )


def best_of(results: Iterable[EvalResult], metric: str, higher_is_better: bool) -> EvalResult | None:
    """The best ok result by the first split's finite `metric`; the earliest step wins a tie."""
    best: EvalResult | None = None
    for result in results:
        if result.status == "ok" and result.beats(best, metric, higher_is_better):
            best = result
    return best


def _scores(value: Any, step: int) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(is_number(v) for v in value.values()):
        raise RecordError(f"step {step}: its metrics are not an object of numbers")
    return {str(name): number(v) for name, v in value.items()}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _number(value: Any) -> float:
    return number(value) if is_number(value) and finite(number(value)) else 0.0
