"""Classification metrics, with scikit-learn's definitions (tests/test_metrics.py checks every number against
it), from confusion matrices that stream: each metric keeps a classes x classes matrix of counts, never the
examples.

NumPy rather than sklearn.metrics: importing that costs seconds of an evaluator's start (it pulls in
SciPy's statistics and pandas), and its input checks cost milliseconds per call; from a confusion matrix
every figure is a few array operations. ROC-AUC is the exception: it needs every score, so it keeps one
number per example (the positive class's probability, not the outputs) and imports scikit-learn when a
two-class task computes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from shared.protocol.artifacts import PR_THRESHOLDS, ConfusionMatrix, PerClass, PRCurves, pr_counts

# The scalars every ClassificationTask reports, beside `loss`.
SCALARS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")

Predict = Callable[[torch.Tensor], torch.Tensor]


def _scores(confusion: np.ndarray) -> dict[str, Any]:
    """Every classification number from a confusion matrix (rows = true class). Classes absent from both
    targets and predictions score 0 (scikit-learn's zero_division=0); with two classes the positive class
    is index 1."""
    hits = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, actual)
    f1 = _ratio(2 * hits, predicted + actual)  # = 2PR/(P+R), and 0 where a class is neither predicted nor present
    scores = {
        "accuracy": float(hits.sum() / max(int(confusion.sum()), 1)),
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "per_class_f1": [float(v) for v in f1],
    }
    if len(confusion) == 2:
        scores |= {"f1": float(f1[1]), "precision": float(precision[1]), "recall": float(recall[1])}
    return scores


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def confusion_counts(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (true, predicted) counts of one batch, on the batch's device."""
    cells = targets.reshape(-1).long() * num_classes + predictions.reshape(-1).long()
    return torch.bincount(cells, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """accuracy, macro precision/recall/F1, per-class F1 and the confusion matrix (rows = true class)."""
    counts = confusion_counts(torch.as_tensor(targets), torch.as_tensor(predictions), num_classes).numpy()
    scores = _scores(counts)
    return {name: scores[name] for name in (*SCALARS, "per_class_f1")} | {"confusion_matrix": counts.tolist()}


class ConfusionMetric:
    """One number (or artifact) scikit-learn computes from the confusion matrix of `predict(outputs)`."""

    def __init__(
        self, class_names: list[str], predict: Predict, score: str, higher_is_better: bool | None = True
    ) -> None:
        self.class_names, self.predict, self.score = class_names, predict, score
        self.higher_is_better = higher_is_better
        self.counts: torch.Tensor | int = 0  # on the batches' device until compute()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.counts = self.counts + confusion_counts(targets, self.predict(outputs), len(self.class_names))

    def compute(self) -> Any:
        classes = len(self.class_names)
        counts = torch.as_tensor(self.counts).cpu().expand(classes, classes).numpy()
        if self.score == "confusion_matrix":
            return ConfusionMatrix(self.class_names, counts.tolist())
        if self.score == "per_class_f1":
            return PerClass(self.class_names, _scores(counts)["per_class_f1"])
        return _scores(counts)[self.score]


class RocAuc:
    """Two-class ROC-AUC (scikit-learn's): it keeps each example's positive-class probability, one float."""

    higher_is_better = True

    def __init__(self, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.probabilities = probabilities
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(self.probabilities(outputs)[:, 1].float().cpu())
        self.targets.append(targets.reshape(-1).cpu())

    def compute(self) -> float:
        targets = torch.cat(self.targets).numpy()
        if len(np.unique(targets)) < 2:  # undefined with one class present
            return float("nan")
        from sklearn.metrics import roc_auc_score  # only two-class tasks pay for the import

        return float(roc_auc_score(targets, torch.cat(self.scores).numpy()))


class PRCurveBuckets:
    """One-vs-rest PR curves, binned as TensorBoard bins them, so memory is classes x buckets."""

    higher_is_better = None

    def __init__(self, class_names: list[str], probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.class_names, self.probabilities = class_names, probabilities
        self.positives = torch.zeros(len(class_names), PR_THRESHOLDS, dtype=torch.float64)
        self.negatives = torch.zeros_like(self.positives)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        positives, negatives = pr_counts(self.probabilities(outputs), targets)
        self.positives += positives
        self.negatives += negatives

    def compute(self) -> PRCurves:
        return PRCurves(self.class_names, self.positives.tolist(), self.negatives.tolist())
