"""The built-in tasks beside digits, end to end as digits is: train.py and the eval.py daemon as two real
processes, every metric the task declares in the ledger and the eval run, the best/ export by the task's
own best metric, and ad hoc evaluation giving exactly the daemon's numbers. One run per task (module
fixtures), small enough for a CPU, from a config file that holds only `task:`: every other option is a
default (the task's own best metric, the evaluation batch size) or one of the overrides below."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from shared import config as cfg
from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.loading import build_task, load_config
from shared.tasks.regression import diabetes_split
from tests.conftest import Proc, process_starter, scalar_points, wait_for_watching
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

# Each run's config file is `task: <name>` alone; these overrides keep it short.
RUNS = {
    # The default train.lr (1e-3) learns too slowly for 300 steps here (r2 0.02, least squares 0.33).
    "regression": ["--set", "train.steps=300", "--set", "train.lr=0.03"],
    # Early stopping on the task's best metric, perplexity: min_delta=1000 makes the second evaluation "no
    # improvement", patience=1 stops there; max_eval_lag=0 makes train.py wait for each evaluation, so that is
    # at step 40 + 10.
    "language_model": [
        "--set", "model.dim=32", "--set", "model.layers=1",
        "--set", "data.context=32", "--set", "data.batch_size=16",
        "--set", "data.train_tokens=20000", "--set", "data.eval_tokens=4000",
        "--set", "train.steps=1000", "--set", "train.lr=0.003", "--set", "train.warmup_steps=5",
        "--set", "train.max_eval_lag=0",
        "--set", "train.early_stop.patience=1", "--set", "train.early_stop.min_delta=1000",
        "--set", "checkpoint.every_steps=20", "--set", "log.every_steps=10",
    ],
    "span_qa": [
        "--set", "model.dim=32", "--set", "model.layers=1", "--set", "data.train_examples=1000",
        "--set", "data.eval_examples=200", "--set", "data.batch_size=32", "--set", "train.steps=80",
        "--set", "train.lr=0.003", "--set", "train.warmup_steps=5",
        "--set", "checkpoint.every_steps=20", "--set", "log.every_steps=10",
    ],
}  # fmt: skip


def finished_run(
    name: str, tmp_path_factory: pytest.TempPathFactory, warm: WarmCli
) -> Iterator[tuple[TrainDir, Callable]]:
    """(train_dir, start) after train.py and the daemon, started together, both exited 0."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "config.yaml").write_text(f"task: {name}\n")
    train_dir = TrainDir(folder / "run")
    train_dir.root.mkdir()  # the daemon waits for train.py in an existing train_dir (it never creates one)
    with process_starter(folder, warm) as start:
        evaluator = start("eval.py", "--train-dir", str(train_dir.root))
        wait_for_watching(evaluator)
        trainer = start(
            "train.py", "--train-dir", str(train_dir.root), "--config", str(folder / "config.yaml"), *RUNS[name]
        )
        assert trainer.wait_while_logging() == 0, trainer.output()
        assert evaluator.wait() == 0, evaluator.output()
        yield train_dir, start


@pytest.fixture(scope="module")
def regression_run(
    tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli
) -> Iterator[tuple[TrainDir, Callable]]:
    yield from finished_run("regression", tmp_path_factory, warm_scripts)


@pytest.fixture(scope="module")
def language_model_run(
    tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli
) -> Iterator[tuple[TrainDir, Callable]]:
    yield from finished_run("language_model", tmp_path_factory, warm_scripts)


@pytest.fixture(scope="module")
def span_qa_run(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[tuple[TrainDir, Callable]]:
    yield from finished_run("span_qa", tmp_path_factory, warm_scripts)


# Each task's own best metric, in its direction.
BEST = {"regression": ("r2", max), "language_model": ("perplexity", min), "span_qa": ("f1", max)}


def adhoc(start, train_dir: TrainDir, checkpoint: str) -> dict:
    proc: Proc = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", checkpoint, "--json")
    assert proc.wait() == 0, proc.output()
    (line,) = [line for line in proc.output().splitlines() if line.startswith("{")]
    return json.loads(line)


@pytest.mark.parametrize("run", ["regression_run", "language_model_run", "span_qa_run"])
def test_every_declared_metric_is_recorded_plotted_and_equal_ad_hoc(request: pytest.FixtureRequest, run: str) -> None:
    train_dir, start = request.getfixturevalue(run)
    config = load_config(train_dir.config)
    declared = {"loss", *build_task(config).build_metrics()}
    records = read_records(train_dir.results)
    assert records and all(r["status"] == "ok" for r in records), records
    for record in records:
        assert set(record["metrics"]) == declared
    for tag in declared:
        points = scalar_points(train_dir.eval_run, tag)
        assert [step for step, _ in points] == [r["step"] for r in records], tag
        assert [value for _, value in points] == pytest.approx([r["metrics"][tag] for r in records], rel=1e-6)
    metric, better = BEST[config.task]
    assert (config.eval.best_metric, config.eval.batch_size) == (metric, cfg.EvalConfig().batch_size)
    best = read_best(train_dir)
    assert best["metric"] == metric and best["value"] == better(r["metrics"][metric] for r in records)
    last = adhoc(start, train_dir, str(records[-1]["step"]))  # a bare step: its checkpoint in checkpoints/
    assert last["metrics"] == records[-1]["metrics"] and last["step"] == records[-1]["step"]


def test_regression_is_as_good_as_least_squares(regression_run: tuple[TrainDir, Callable]) -> None:
    train_dir, _ = regression_run
    x_train, x_val, y_train, y_val = diabetes_split(0.2, 0)
    least_squares = r2_score(y_val, LinearRegression().fit(x_train, y_train).predict(x_val))
    assert read_best(train_dir)["value"] >= least_squares - 0.05


def test_the_language_model_stops_early_on_perplexity_below_the_unigram_baseline(
    language_model_run: tuple[TrainDir, Callable],
) -> None:
    train_dir, _ = language_model_run
    finished = json.loads(train_dir.finished.read_text())
    assert (finished["reason"], finished["step"]) == ("early_stop", 50)
    assert "val perplexity did not improve" in finished["decision"]["reason"]
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == [20, 40, 50]
    baseline = build_task(load_config(train_dir.config)).unigram_perplexity()
    assert records[-1]["metrics"]["perplexity"] < baseline
    assert [step for step, _ in scalar_points(train_dir.train_run, "tokens_per_sec")] == [10, 20, 30, 40, 50]


def test_the_span_reader_learns_to_point_at_the_answer(span_qa_run: tuple[TrainDir, Callable]) -> None:
    train_dir, _ = span_qa_run
    records = read_records(train_dir.results)
    f1 = [r["metrics"]["f1"] for r in records]
    assert f1[-1] > f1[0] and f1[-1] > 0.3, f1  # an untrained reader: F1 0.17 (partial overlaps)
    assert all(r["metrics"]["exact_match"] <= r["metrics"]["f1"] + 1e-9 for r in records)
