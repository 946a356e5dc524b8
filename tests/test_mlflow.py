"""The MLflow backend against a real tracking server (SQLite store, on 127.0.0.1) that the tests start:
train.py and the eval.py daemons of a train_dir log into one MLflow run, one point per step per
evaluation, at the checkpoint's step, with nothing lost or doubled across an evaluator SIGKILL; the run
is RUNNING until training finished and every checkpoint is evaluated, then FINISHED (KILLED or FAILED
when train.py is stopped or fails)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.loggers.backends import open_run, running
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.loading import load_config
from tests.conftest import ROOT, SHORT_RUN, free_port, process_starter, wait_until, wait_while_progressing
from tests.warm_cli import WarmCli

mlflow = pytest.importorskip("mlflow", reason="the dev extra installs mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow

EVAL_KEYS = ["eval/loss", "eval/accuracy", "eval/f1_macro", "eval/precision_macro", "eval/recall_macro"]
TRAIN_KEYS = ["train/loss", "train/learning_rate", "train/grad_norm", "train/examples_per_sec", "train/eval_lag"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a fresh SQLite store; its whole process group is stopped at the end."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "art")),
    ]
    log = folder / "server.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: nothing to run here
        server = subprocess.Popen(
            command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{uri}/health") or server.poll() is not None, 300, "mlflow server to answer")
        assert server.poll() is None, log.read_text()
        print(f"mlflow server answered after {time.monotonic() - started:.1f}s")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def answers(url: str) -> bool:
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, key))


def test_train_and_evaluators_share_one_run_across_an_evaluator_sigkill(
    tmp_path: Path, tracking_uri: str, warm_scripts: WarmCli
) -> None:
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    backends = ["--set", "log.backends=[tensorboard,mlflow]", "--set", f"log.mlflow_tracking_uri={tracking_uri}"]
    run = [*SHORT_RUN, "--set", "train.steps=120", *backends]
    started = time.monotonic()
    with process_starter(tmp_path, warm_scripts) as start:
        evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120")
        trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
        wait_while_progressing(lambda: len(read_records(train_dir.results)) >= 1, trainer, "the first evaluation")
        evaluator.signal(signal.SIGKILL)  # mid-run: train.py goes on writing checkpoints
        evaluator.wait()
        run_id = json.loads(train_dir.mlflow_run.read_text())["run_id"]
        # Training, or finished with checkpoints left to evaluate: either way the run goes on.
        assert MlflowClient(tracking_uri).get_run(run_id).info.status == "RUNNING"
        restarted = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120")
        assert trainer.wait_while_logging() == 0, trainer.output()
        assert restarted.wait() == 0, restarted.output()

    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED", "training finished and every checkpoint is evaluated"
    runs = client.search_runs(["0"], filter_string="attributes.run_name = 'run'")  # deleted ones (a lost race) aside
    assert [r.info.run_id for r in runs] == [run_id], "one MLflow run for the whole train_dir"
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == [40, 80, 120] and all(r["status"] == "ok" for r in records)
    points = 0
    for key in EVAL_KEYS:  # one point per evaluation, at the checkpoint's step, equal to the ledger's
        history = sorted(client.get_metric_history(run_id, key), key=lambda point: point.step)
        assert [p.step for p in history] == [40, 80, 120], key
        metric = key.split("/")[1]
        assert [p.value for p in history] == pytest.approx([r["metrics"][metric] for r in records], rel=1e-6)
        points += len(history)
    for key in TRAIN_KEYS:
        train_steps = steps(client, run_id, key)
        assert train_steps == list(range(10, 121, 10)), key
        points += len(train_steps)
    artifacts = [a.path for a in client.list_artifacts(run_id, "eval/confusion_matrix")]
    assert artifacts == [f"eval/confusion_matrix/step-{s:09d}.{ext}" for s in (40, 80, 120) for ext in ("md", "png")]
    params = client.get_run(run_id).data.params
    assert params["train.optimizer"] == "adamw" and params["model.channels"] == "8"
    print(f"read back {points} metric points; the run took {time.monotonic() - started:.1f}s")


def test_a_run_reopened_after_a_crash_gets_no_point_twice(tmp_path: Path, tracking_uri: str) -> None:
    """What a recorder killed between its points and its ledger line left is not sent again."""
    config = load_config(
        ROOT / "configs" / "digits.yaml", ["log.backends=[mlflow]", f"log.mlflow_tracking_uri={tracking_uri}"]
    )
    train_dir = TrainDir(tmp_path)
    crashed = open_run(config, train_dir, train_dir.eval_run, purge_step=0)
    for step in (40, 80):
        crashed.scalar("accuracy", step / 100, step)
    crashed.flush()  # and then it died: step 80's ledger line was never written
    with open_run(config, train_dir, train_dir.eval_run, purge_step=41) as redone:
        redone.scalar("accuracy", 0.8, 80)
        redone.scalar("accuracy", 1.2, 120)
    client = MlflowClient(tracking_uri)
    run_id = json.loads(train_dir.mlflow_run.read_text())["run_id"]
    assert steps(client, run_id, "eval/accuracy") == [40, 80, 120]


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED")])
def test_train_pys_run_ends_killed_or_failed_and_runs_again_on_restart(
    tmp_path: Path, tracking_uri: str, stop: type[BaseException], status: str
) -> None:
    """What train.py's training loop runs in (backends.running): an interrupt or an error ends the run."""
    config = load_config(
        ROOT / "configs" / "digits.yaml", ["log.backends=[mlflow]", f"log.mlflow_tracking_uri={tracking_uri}"]
    )
    train_dir = TrainDir(tmp_path)
    client = MlflowClient(tracking_uri)
    run = functools.partial(open_run, config, train_dir, train_dir.train_run, purge_step=1)
    with pytest.raises(stop), run(), running(config, train_dir):
        raise stop
    run_id = json.loads(train_dir.mlflow_run.read_text())["run_id"]
    assert client.get_run(run_id).info.status == status
    with run(), running(config, train_dir):
        assert client.get_run(run_id).info.status == "RUNNING", "a restarted train.py runs the same run again"


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("unreachable", "no MLflow server answers"),
        ("unset", "no tracking server is set"),
        ("not installed", "the mlflow package is not installed"),
    ],
)
def test_an_unusable_mlflow_is_one_line_and_exit_2_at_start(tmp_path: Path, problem: str, expected: str) -> None:
    uri = {"unreachable": f"http://127.0.0.1:{free_port()}", "unset": ""}.get(problem, "http://127.0.0.1:1")
    args = [*SHORT_RUN, "--set", "log.backends=[tensorboard,mlflow]", "--set", f"log.mlflow_tracking_uri={uri}"]
    # Python's own way to make a package absent for one process: a None entry in sys.modules.
    hide = "import sys; sys.modules['mlflow'] = None; " if problem == "not installed" else ""
    launch = f"{hide}import runpy, sys; sys.argv[0] = 'train.py'; runpy.run_path('train.py', run_name='__main__')"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", launch, "--train-dir", str(tmp_path / "run"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: log.") and expected in lines[0], done.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*")), "refused before any training"


def test_another_trainers_run_is_evaluated_into_its_own_mlflow_run(
    tmp_path: Path, tracking_uri: str, warm_scripts: WarmCli
) -> None:
    """source.mlflow_run_id: the eval curves of a foreign run (weights files here) go into the trainer's run."""
    from tests.test_foreign_runs import save_weights

    client = MlflowClient(tracking_uri)
    trainer_run = client.create_run("0", run_name="someone-elses-trainer").info.run_id
    client.log_metric(trainer_run, "train/loss", 1.0, step=10)
    run = tmp_path / "run"
    run.mkdir()
    for step in (10, 20):
        (run / f"model_{step}.safetensors").write_bytes(save_weights(step))
    source = {"format": "files", "pattern": "model_{step}.safetensors", "mlflow_run_id": trainer_run}
    log = {"backends": ["tensorboard", "mlflow"], "mlflow_tracking_uri": tracking_uri}
    (tmp_path / "eval.yaml").write_text(json.dumps({"task": "regression", "log": log, "source": source}))
    with process_starter(tmp_path, warm_scripts) as start:
        config = str(tmp_path / "eval.yaml")
        daemon = start("eval.py", "--train-dir", str(run), "--config", config, "--idle-timeout", "1")
        assert daemon.wait() == 0, daemon.output()
    records = read_records(run / "eval" / "results.jsonl")
    history = sorted(client.get_metric_history(trainer_run, "eval/r2"), key=lambda point: point.step)
    assert [(p.step, p.value) for p in history] == [(r["step"], pytest.approx(r["metrics"]["r2"])) for r in records]
    assert steps(client, trainer_run, "train/loss") == [10]
