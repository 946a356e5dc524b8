"""Classification metrics, from the confusion matrix, with scikit-learn's definitions (tests/test_metrics.py
checks every number against it).

NumPy rather than sklearn.metrics: importing that costs seconds of an evaluator's start (it pulls in
SciPy's statistics and pandas), and its input checks cost milliseconds per call, several calls per
checkpoint; from a confusion matrix every figure is a few array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The scalars eval.py writes to TensorBoard, beside `loss`.
SCALARS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


def classification_metrics(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """accuracy, macro precision/recall/F1, per-class F1 and the confusion matrix (rows = true class).

    Classes absent from both targets and predictions score 0 (scikit-learn's zero_division=0).
    """
    y_true, y_pred = np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    confusion = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    hits = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, actual)
    f1 = _ratio(2 * hits, predicted + actual)  # = 2PR/(P+R), and 0 where a class is neither predicted nor present
    return {
        "accuracy": float(hits.sum() / max(len(y_true), 1)),
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "per_class_f1": [float(v) for v in f1],
        "confusion_matrix": confusion.tolist(),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)
