"""Evaluation splits and cross-validation folds: which examples each gets, and `launch.py --folds` with
`eval.py --summarize` on real processes."""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from shared.evaluation.crossval import fold_folder
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_results
from shared.protocol.results import best_of
from shared.tasks.loading import build_task, load_config, resolve_config
from shared.tasks.splits import eval_splits, training_data, validation_data
from tests.custom_task import BlobsTask


class NumberedTask(BlobsTask):
    """Blobs whose training inputs are their own index, so a split's examples can be named."""

    def train_data(self) -> TensorDataset:
        n = self.data_config.examples
        return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2), torch.arange(n) % 3)

    def test_data(self) -> TensorDataset:
        return self._blobs(split=2)


def numbered(**data: int) -> NumberedTask:
    config = resolve_config({"task": "tests.custom_task:BlobsTask", "data": {"examples": 90, **data}})
    return NumberedTask(config.model, config.data, seed=0)


def indices(dataset: TensorDataset) -> list[int]:
    return dataset.tensors[0][:, 0].long().tolist()


def test_folds_partition_the_training_set() -> None:
    held_out = []
    for fold in range(3):
        task = numbered(folds=3, fold=fold)
        train, val = indices(training_data(task)), indices(validation_data(task))
        assert sorted(train + val) == list(range(90)) and len(val) == 30, fold
        assert indices(validation_data(numbered(folds=3, fold=fold))) == val, "folds must not depend on the call"
        held_out += val
    assert sorted(held_out) == list(range(90)), "every example is held out exactly once"
    assert indices(training_data(numbered())) == list(range(90)), "folds: 0 trains on everything"


def test_train_split_and_max_examples_are_fixed_subsets() -> None:
    task = numbered(folds=3, fold=1)
    splits = eval_splits(task, ["val", "train"], max_examples=0)
    assert list(splits) == ["val", "train"] and len(splits["train"]) == len(splits["val"]) == 30
    assert set(indices(splits["train"])) <= set(indices(training_data(task)))
    small = eval_splits(task, ["train", "val"], max_examples=7)
    assert [len(d) for d in small.values()] == [7, 7]
    again = eval_splits(numbered(folds=3, fold=1), ["train", "val"], max_examples=7)
    assert [indices(d) for d in small.values()] == [indices(d) for d in again.values()]
    assert len(eval_splits(task, ["test"], max_examples=0)["test"]) == 90
    digits = build_task(load_config("configs/digits.yaml"))
    assert len(eval_splits(digits, ["val"], 0)["val"]) == len(digits.eval_data())


@pytest.mark.parametrize(("val_fraction", "split_seed"), [(0.2, 0), (0.05, 1), (0.5, 7), (0.33, 12345)])
def test_digits_holds_out_what_scikit_learns_stratified_split_chose(val_fraction: float, split_seed: int) -> None:
    """digits splits without importing scikit-learn (seconds of every start), into the same examples, in
    the same order, as `train_test_split(stratify=...)`: what every train_dir made before holds out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from shared.tasks.digits import _split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    expected = train_test_split(images, labels, test_size=val_fraction, stratify=labels, random_state=split_seed)
    for got, wanted in zip(_split(val_fraction, split_seed), expected, strict=True):
        assert torch.equal(got, wanted)


@pytest.mark.slow
@pytest.mark.long
def test_launch_cross_validates_and_eval_summarizes(tmp_path: Path, start) -> None:
    sets = ["train.steps=40", "train.warmup_steps=0", "checkpoint.every_steps=20", "model.hidden=8"]
    launcher = start(
        "launch.py",
        *("--config", "configs/digits.yaml", "--train-dir", str(tmp_path / "cv"), "--folds", "2"),
        *(arg for s in [*sets, "model.channels=4"] for arg in ("--set", s)),
    )
    assert launcher.wait() == 0, launcher.output()
    folders = [fold_folder(tmp_path / "cv", fold) for fold in range(2)]
    for fold, folder in enumerate(folders):
        config = load_config(TrainDir(folder).config)
        assert (config.data.folds, config.data.fold) == (2, fold)
    assert "accuracy" in launcher.output() and "±" in launcher.output()
    # The hint runs in a fresh shell: the venv's own TensorBoard, by its path (nothing is activated).
    program, logdir = re.search(r"compare the folds: (\S+) --logdir (\S+)", launcher.output()).groups()
    assert os.access(program, os.X_OK) and Path(program).name == "tensorboard" and logdir == str(tmp_path / "cv")

    summary = start("eval.py", "--summarize", *map(str, folders), "--json")
    assert summary.wait() == 0, summary.output()
    printed = json.loads(summary.output())
    bests = [best_of(read_results(TrainDir(f).results), "accuracy", True).to_record() for f in folders]
    assert [f["step"] for f in printed["folds"]] == [b["step"] for b in bests]
    for metric, stats in printed["metrics"].items():
        values = [b["metrics"][metric] for b in bests]
        assert stats["mean"] == pytest.approx(statistics.fmean(values))
        assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert bests[0]["metrics"] != bests[1]["metrics"], "two folds scored the same: were they the same split?"

    # The folder launch.py was given stands for its folds.
    by_parent = start("eval.py", "--summarize", str(tmp_path / "cv"), "--json")
    assert by_parent.wait() == 0, by_parent.output()
    assert json.loads(by_parent.output()) == printed
