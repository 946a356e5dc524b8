"""The general Task interface in one process: batches of any nesting, a task's own collate and forward,
declared (streaming) metrics against scikit-learn, torchmetrics as it is, and the checks made at start."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch.utils.tensorboard.summary import compute_curve

from shared import config as cfg
from shared.checkpoints.store import save
from shared.errors import UsageError
from shared.evaluation.evaluator import Evaluator
from shared.metrics.base import value_of
from shared.metrics.classification import PR_THRESHOLDS, ConfusionMetric, PRCurveBuckets, RocAuc
from shared.metrics.language import Perplexity, TokenAccuracy
from shared.metrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score
from shared.protocol.layout import TrainDir
from shared.runtime import devices
from shared.tasks.base import Task
from shared.tasks.language import LanguageModelTask
from shared.tasks.loading import load_config, resolve_config
from tests.custom_task import BlobsData, BlobsModel
from tests.odd_tasks import DictSequenceTask, MislabelledBlobsTask, NarrowBlobsTask, OneLogitTask, TopThreeTask

CPU = torch.device("cpu")


def in_batches(metric, outputs: torch.Tensor, targets: torch.Tensor, size: int = 7):
    for o, t in zip(outputs.split(size), targets.split(size), strict=True):
        metric.update(o, t)
    return value_of("metric", metric.compute())


def test_nested_batches_move_to_the_device_whole() -> None:
    Pair = namedtuple("Pair", "left right")
    batch = ({"ids": torch.ones(2, 3), "extra": [torch.zeros(2), (torch.ones(1), "name")]}, Pair(torch.ones(2), 3))
    moved = devices.to_device(batch, CPU)
    assert moved[0]["extra"][1][1] == "name" and isinstance(moved[1], Pair) and moved[1].right == 3
    assert torch.equal(moved[0]["ids"], batch[0]["ids"])
    images = torch.ones(2, 3, 4, 4)
    assert devices.to_device(images, CPU, channels_last=True).is_contiguous()  # NHWC is for CUDA only


def test_examples_are_counted_from_the_batch_whatever_its_shape() -> None:
    task = DictSequenceTask(None, None, 0)
    inputs, targets = task.collate([task.train_data()[i] for i in range(5)])
    assert task.examples(inputs, targets) == 5
    assert task.examples({"points": torch.ones(4, 2)}, {"a": torch.ones(4), "b": torch.ones(4)}) == 4
    lm_config = load_config("configs/language_model.yaml")
    language = LanguageModelTask(lm_config.model, lm_config.data, 0)
    tokens = torch.zeros(3, 64, dtype=torch.long)
    assert (language.examples(tokens, tokens), language.tokens(tokens, tokens)) == (3, 192)


def test_regression_metrics_stream_to_scikit_learns_values() -> None:
    rng = torch.Generator().manual_seed(0)
    targets = torch.randn(50, generator=rng) * 3 + 10
    outputs = targets + torch.randn(50, generator=rng)
    y, p = targets.numpy(), outputs.numpy()
    assert in_batches(MeanSquaredError(), outputs, targets) == pytest.approx(skm.mean_squared_error(y, p))
    assert in_batches(MeanAbsoluteError(), outputs, targets) == pytest.approx(skm.mean_absolute_error(y, p))
    assert in_batches(R2Score(), outputs, targets) == pytest.approx(skm.r2_score(y, p))


def test_two_class_metrics_equal_scikit_learn_and_the_pr_buckets_tensorboards() -> None:
    rng = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 2, (60,), generator=rng)
    logits = torch.randn(60, 2, generator=rng) + torch.nn.functional.one_hot(targets, 2)
    task = OneLogitTask(BlobsModel(), BlobsData(), 0)
    names, y, p = task.class_names, targets.numpy(), logits.argmax(1).numpy()
    for name, expected in [
        ("f1", skm.f1_score(y, p)),
        ("precision", skm.precision_score(y, p)),
        ("recall", skm.recall_score(y, p)),
        ("accuracy", skm.accuracy_score(y, p)),
        ("f1_macro", skm.f1_score(y, p, average="macro")),
    ]:
        assert in_batches(ConfusionMetric(names, task.predict, name), logits, targets) == pytest.approx(expected), name
    probabilities = torch.softmax(logits, 1)
    auc = in_batches(RocAuc(task.probabilities), logits, targets)
    assert auc == pytest.approx(skm.roc_auc_score(y, probabilities[:, 1].numpy()))
    curves = in_batches(PRCurveBuckets(names, task.probabilities), logits, targets)
    for index in range(2):
        expected = compute_curve(y == index, probabilities[:, index].numpy(), num_thresholds=PR_THRESHOLDS)
        tp = np.cumsum(np.asarray(curves.positives[index])[::-1])[::-1]
        fp = np.cumsum(np.asarray(curves.negatives[index])[::-1])[::-1]
        assert np.allclose(tp, expected[0]) and np.allclose(fp, expected[1])


def test_language_metrics_stream_to_the_whole_sets_values() -> None:
    rng = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(6, 5, 11, generator=rng), torch.randint(0, 11, (6, 5), generator=rng)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert in_batches(Perplexity(), logits, targets, size=4) == pytest.approx(float(nll.exp()))
    accuracy = float((logits.argmax(-1) == targets).float().mean())
    assert in_batches(TokenAccuracy(), logits, targets, size=4) == pytest.approx(accuracy)


def test_a_one_logit_binary_classifier_gets_every_number_and_its_pr_curves() -> None:
    task = OneLogitTask(BlobsModel(), BlobsData(examples=90), 0)
    result = Evaluator(task, CPU, batch_size=16).evaluate(0).splits["val"]
    assert {"loss", "accuracy", "f1", "precision", "recall", "roc_auc", "f1_macro"} <= result.metrics.keys()
    assert sum(map(sum, result.confusion_matrix)) == 90
    assert len(result.artifacts["pr_curves"].positives) == 2


def test_dict_inputs_of_variable_length_go_through_the_tasks_collate_and_forward() -> None:
    task = DictSequenceTask(None, cfg.DataConfig(), 0)
    result = Evaluator(task, CPU, batch_size=8).evaluate(0).splits["val"]
    assert set(result.metrics) == {"loss", "mse"} and result.metrics["mse"] == pytest.approx(result.metrics["loss"])


def test_a_torchmetrics_metric_works_as_it_is(tmp_path: Path) -> None:
    task = TopThreeTask(BlobsModel(), BlobsData(examples=60), 0)
    evaluator = Evaluator(task, CPU, batch_size=16)
    torch.manual_seed(3)
    save(TrainDir(tmp_path), 5, {"model": task.build_model().state_dict()})
    result = evaluator.evaluate(evaluator.load_checkpoint(TrainDir(tmp_path).checkpoint(5)))
    points, labels = task.eval_data().tensors
    top3 = evaluator.model(points).topk(3, dim=1).indices
    expected = float((top3 == labels[:, None]).any(dim=1).float().mean())
    assert result.metrics["top3"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("task_class", "named"),
    [
        pytest.param(NarrowBlobsTask, ["outputs 3 values", "has 4 classes"], id="width"),
        pytest.param(MislabelledBlobsTask, ["class 2", "2 classes"], id="target-out-of-range"),
    ],
)
def test_a_classifier_that_does_not_fit_its_class_names_is_refused_at_start(task_class: type[Task], named) -> None:
    with pytest.raises(UsageError) as caught:
        Evaluator(task_class(BlobsModel(), BlobsData(), 0), CPU, batch_size=16)
    assert all(part in str(caught.value) for part in named), caught.value


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param(["eval.best_metric=acuracy"], ["eval.best_metric", "'acuracy'", "loss, accuracy"], id="typo"),
        pytest.param(["train.early_stop.metric=mse"], ["train.early_stop.metric", "f1_macro"], id="not-this-task"),
    ],
)
def test_an_unknown_metric_name_lists_the_tasks_metrics(overrides: list[str], named: list[str]) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        load_config("configs/digits.yaml", overrides)
    assert all(part in str(caught.value) for part in named), caught.value


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("digits", "accuracy"),
        ("regression", "r2"),
        ("language_model", "perplexity"),
        ("tests.odd_tasks:DictSequenceTask", "loss"),  # declares none
    ],
)
def test_the_best_metric_is_the_tasks_own_unless_the_config_names_one(task: str, metric: str) -> None:
    """eval.best_metric unset is the task's best_metric, and a policy's unset metric is eval.best_metric."""
    config = resolve_config({"task": task})
    assert config.eval.best_metric == config.train.on_plateau.metric == config.train.early_stop.metric == metric
    saved = cfg.parse_yaml(cfg.to_yaml(config))  # config.yaml holds the names, as older train_dirs' do
    assert saved["eval"]["best_metric"] == saved["train"]["early_stop"]["metric"] == metric
    named = resolve_config({"task": task, "eval": {"best_metric": "loss"}, "train": {"early_stop": {"metric": metric}}})
    assert (named.eval.best_metric, named.eval.best_mode, named.train.on_plateau.metric) == ("loss", "min", "loss")
    assert named.train.early_stop.metric == metric


def test_a_task_whose_best_metric_it_does_not_measure_is_refused() -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        resolve_config({"task": "tests.odd_tasks:MisnamedBestTask"})
    assert "MisnamedBestTask.best_metric" in str(caught.value) and "'top3'" in str(caught.value), caught.value
    named = resolve_config({"task": "tests.odd_tasks:MisnamedBestTask", "eval": {"best_metric": "f1_macro"}})
    assert named.train.early_stop.metric == "f1_macro"


def test_directions_come_from_the_metrics() -> None:
    regression = load_config("configs/regression.yaml", ["train.on_plateau.metric=mse", "train.early_stop.metric=r2"])
    assert regression.eval.best_mode == "max"  # r2
    plateau, stop = regression.train.on_plateau, regression.train.early_stop
    assert (plateau.improves_upwards(plateau.metric), stop.improves_upwards(stop.metric)) == (False, True)
    with pytest.raises(cfg.ConfigError, match=r"mae improves downwards; set train\.early_stop\.mode=min"):
        load_config("configs/regression.yaml", ["train.early_stop.metric=mae", "train.early_stop.mode=max"])
    language = load_config("configs/language_model.yaml")  # perplexity, lower is better
    assert language.eval.best_mode == "min" and not language.train.early_stop.improves_upwards("perplexity")
