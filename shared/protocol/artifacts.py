"""Small results a metric may compute instead of a number: what the dashboards draw beside the scalars.

Each is plain data (lists of numbers and names), so an outcome file carries it as JSON, and its size
depends on the number of classes, never on the number of examples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # imported where it is used: launch.py and the ledger's readers need no torch
    import torch

PR_THRESHOLDS = 127  # TensorBoard's default number of PR-curve buckets


@dataclass
class Artifact:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Its fields as they are (dataclasses.asdict would copy every number of every list: milliseconds a
        checkpoint for PR curves)."""
        return {"kind": self.kind, **{field.name: getattr(self, field.name) for field in fields(self)}}


@dataclass
class ConfusionMatrix(Artifact):
    """Counts of (true class, predicted class); rows are the true class."""

    kind: ClassVar[str] = "confusion_matrix"
    class_names: list[str]
    counts: list[list[int]]


@dataclass
class PerClass(Artifact):
    """One value per class (per-class F1, say)."""

    kind: ClassVar[str] = "per_class"
    class_names: list[str]
    values: list[float]


@dataclass
class PRCurves(Artifact):
    """One-vs-rest precision/recall curves per class, as TensorBoard's PR-curve plugin bins them: for each
    class, the positives and negatives whose probability for it fell in each bucket."""

    kind: ClassVar[str] = "pr_curves"
    class_names: list[str]
    positives: list[list[float]]  # [class][bucket]
    negatives: list[list[float]]


def pr_counts(probabilities: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the positives and negatives whose probability for it fell in each of PR_THRESHOLDS
    buckets, as TensorBoard bins them: what PRCurves holds, summed over batches."""
    import torch

    classes = probabilities.shape[-1]
    buckets = (probabilities.float().cpu() * (PR_THRESHOLDS - 1)).floor().long().clamp(0, PR_THRESHOLDS - 1)
    cells = (torch.arange(classes) * PR_THRESHOLDS + buckets).reshape(-1)
    positive = (targets.reshape(-1, 1).cpu() == torch.arange(classes)).reshape(-1).double()
    size = classes * PR_THRESHOLDS
    positives = torch.bincount(cells, weights=positive, minlength=size).view(classes, PR_THRESHOLDS)
    return positives, torch.bincount(cells, weights=1 - positive, minlength=size).view(classes, PR_THRESHOLDS)


def numbered(count: int) -> list[str]:
    """Class names where only the count is known (a ledger line's per-class F1)."""
    return [str(index) for index in range(count)]


KINDS: dict[str, type[Artifact]] = {cls.kind: cls for cls in (ConfusionMatrix, PerClass, PRCurves)}


def from_dict(fields: dict[str, Any]) -> Artifact:
    """The artifact `Artifact.to_dict` gave; KeyError or TypeError for anything else."""
    fields = dict(fields)
    return KINDS[fields.pop("kind")](**fields)
