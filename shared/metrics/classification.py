"""Classification metrics, all computed by scikit-learn so they mean what users expect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

# The scalars eval.py writes to TensorBoard, beside `loss`.
SCALARS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


def classification_metrics(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """accuracy, macro precision/recall/F1, per-class F1 and the confusion matrix (rows = true class).

    Classes absent from both targets and predictions score 0 rather than warn (zero_division=0).
    """
    labels = np.arange(num_classes)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        targets, predictions, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(skm.accuracy_score(targets, predictions)),
        "f1_macro": float(f1),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "per_class_f1": [
            float(v) for v in skm.f1_score(targets, predictions, labels=labels, average=None, zero_division=0)
        ],
        "confusion_matrix": skm.confusion_matrix(targets, predictions, labels=labels).tolist(),
    }
