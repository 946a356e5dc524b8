"""shared.metrics.classification against scikit-learn and hand-computed values; Evaluator repeatability."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm

from shared import config as cfg
from shared.checkpoints.store import save
from shared.evaluation.evaluator import Evaluator
from shared.metrics.classification import SCALARS, classification_metrics
from shared.protocol.layout import TrainDir
from shared.tasks.loading import build_task, load_config

REPO = Path(__file__).resolve().parent.parent

CASES = [
    pytest.param([0, 1, 2, 2], [0, 1, 2, 1], 3, id="small"),
    pytest.param([0, 0, 1, 1, 2, 2, 3], [0, 1, 1, 1, 0, 2, 2], 6, id="absent-from-predictions-and-from-both"),
    pytest.param([2, 2, 2, 2], [2, 2, 2, 2], 4, id="one-class-perfect"),
    pytest.param([0, 1, 0, 1, 0], [1, 0, 1, 0, 1], 2, id="all-wrong"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [3, 1, 4, 1, 5, 8, 2, 6, 5, 3, 6], 12, id="digits-like"),
]


@pytest.mark.parametrize(("targets", "predictions", "num_classes"), CASES)
def test_metrics_equal_scikit_learn(targets: list[int], predictions: list[int], num_classes: int) -> None:
    """Every number is scikit-learn's for the same labels 0..num_classes-1 (absent classes score 0)."""
    labels = list(range(num_classes))
    got = classification_metrics(targets, predictions, num_classes)
    macro = {"labels": labels, "average": "macro", "zero_division": 0}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(targets, predictions))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(targets, predictions, **macro))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(targets, predictions, **macro))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(targets, predictions, **macro))
    assert got["per_class_f1"] == pytest.approx(
        skm.f1_score(targets, predictions, labels=labels, average=None, zero_division=0).tolist()
    )
    assert got["confusion_matrix"] == skm.confusion_matrix(targets, predictions, labels=labels).tolist()
    assert len(got["per_class_f1"]) == num_classes
    assert all(type(got[name]) is float for name in SCALARS)  # plain floats, for JSON and TensorBoard


def test_metrics_by_hand_four_examples() -> None:
    """targets 0,1,2,2 vs predictions 0,1,2,1 over 4 classes (class 3 never seen), worked out by hand."""
    got = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], num_classes=4)
    assert got["accuracy"] == pytest.approx(0.75)
    # class 0: P=1 R=1 F1=1; class 1: P=1/2 R=1 F1=2/3; class 2: P=1 R=1/2 F1=2/3; class 3: all 0
    assert got["per_class_f1"] == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0])
    assert got["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0) / 4)
    assert got["precision_macro"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert got["recall_macro"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert got["confusion_matrix"] == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]


def test_metrics_by_hand_class_never_predicted() -> None:
    """A class that occurs but is never predicted has precision 0 (not a warning) and recall 0."""
    got = classification_metrics([0, 1, 1], [0, 0, 0], num_classes=2)
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["precision_macro"] == pytest.approx((1 / 3 + 0) / 2)
    assert got["recall_macro"] == pytest.approx((1 + 0) / 2)
    assert got["per_class_f1"] == pytest.approx([0.5, 0.0])
    assert got["confusion_matrix"] == [[1, 0], [2, 0]]


@pytest.fixture(scope="module")
def digits_evaluator() -> tuple[Evaluator, cfg.Config]:
    config = load_config(REPO / "configs" / "digits.yaml", ["model.channels=4", "model.hidden=16"])
    return Evaluator(build_task(config), torch.device("cpu"), batch_size=64), config


def _random_checkpoint(train_dir: TrainDir, config: cfg.Config, step: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_task(config).build_model()
    return save(train_dir, step, {"model": model.state_dict()})


def test_evaluator_is_repeatable(tmp_path: Path, digits_evaluator: tuple[Evaluator, cfg.Config]) -> None:
    """The same checkpoint scores exactly the same every time, also after scoring another one in between
    and in a fresh Evaluator; different weights score differently (the checkpoint is really used)."""
    evaluator, config = digits_evaluator
    train_dir = TrainDir(tmp_path)
    first = _random_checkpoint(train_dir, config, 100, seed=1)
    second = _random_checkpoint(train_dir, config, 200, seed=2)

    a = evaluator.evaluate(evaluator.load_checkpoint(first))
    b = evaluator.evaluate(evaluator.load_checkpoint(second))
    again = evaluator.evaluate(evaluator.load_checkpoint(first))
    fresh_evaluator = Evaluator(evaluator.task, torch.device("cpu"), batch_size=64)
    fresh = fresh_evaluator.evaluate(fresh_evaluator.load_checkpoint(first))

    assert (a.step, b.step) == (100, 200)
    assert set(a.metrics) == {"loss", *SCALARS}
    assert again == a
    assert fresh == a
    assert b.metrics != a.metrics
    assert sum(map(sum, a.splits["val"].confusion_matrix)) == len(evaluator.task.eval_data())
