"""`ClassificationTask`: a Task whose outputs are one logit per class and whose targets are class indices.

It brings the cross-entropy loss, arg-max predictions and scikit-learn's metrics (accuracy, macro
precision/recall/F1, per-class F1, the confusion matrix, PR curves; with two classes also the positive
class's F1, precision, recall and ROC-AUC). A two-class task may instead output one logit (BCE).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from shared.errors import UsageError
from shared.metrics.base import Metric
from shared.metrics.classification import SCALARS, ConfusionMetric, PRCurveBuckets, RocAuc
from shared.tasks.base import Task

PR_CURVE_MAX_CLASSES = 20  # one PR curve per class; past this many the PR Curves tab is no longer readable


class ClassificationTask(Task):
    best_metric = "accuracy"

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """One name per class index; its length is the number of classes."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._one_logit(outputs):
            return nn.functional.binary_cross_entropy_with_logits(outputs.reshape(-1), targets.reshape(-1).float())
        return nn.functional.cross_entropy(outputs, targets)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class indices from model outputs, for the metrics."""
        if self._one_logit(outputs):
            return (outputs.reshape(-1) > 0).long()
        return outputs.argmax(dim=-1)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """`[examples, classes]` class probabilities, for PR curves and ROC-AUC."""
        if self._one_logit(outputs):
            positive = torch.sigmoid(outputs.float().reshape(-1, 1))
            return torch.cat([1 - positive, positive], dim=1)
        return torch.softmax(outputs.float(), dim=-1)

    def build_metrics(self) -> dict[str, Metric]:
        names = self.class_names
        metrics: dict[str, Metric] = {name: ConfusionMetric(names, self.predict, name) for name in SCALARS}
        if len(names) == 2:
            metrics |= {name: ConfusionMetric(names, self.predict, name) for name in ("f1", "precision", "recall")}
            metrics["roc_auc"] = RocAuc(self.probabilities)
        metrics["per_class_f1"] = ConfusionMetric(names, self.predict, "per_class_f1", higher_is_better=None)
        metrics["confusion_matrix"] = ConfusionMetric(names, self.predict, "confusion_matrix", higher_is_better=None)
        if len(names) <= PR_CURVE_MAX_CLASSES:
            metrics["pr_curves"] = PRCurveBuckets(names, self.probabilities)
        return metrics

    def check_outputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        classes = len(self.class_names)
        width = outputs.shape[-1] if outputs.dim() > 1 else 1
        if width != classes and not self._one_logit(outputs):
            raise UsageError(
                f"task {type(self).__name__}: the model outputs {width} values per example but class_names has "
                f"{classes} classes; make the model's last layer {classes} wide or fix class_names"
            )

    def check_targets(self, targets: torch.Tensor) -> None:
        classes = len(self.class_names)
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= classes:
            bad = high if high >= classes else low
            raise UsageError(
                f"task {type(self).__name__}: a target is class {bad}, outside the {classes} classes of class_names "
                f"(0 to {classes - 1}); fix the data's labels or class_names"
            )

    def _one_logit(self, outputs: torch.Tensor) -> bool:
        """A two-class model may output one logit per example (`[N]` or `[N, 1]`) instead of two."""
        return len(self.class_names) == 2 and (outputs.dim() == 1 or outputs.shape[-1] == 1)
