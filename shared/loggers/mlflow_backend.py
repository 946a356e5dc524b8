"""The MLflow backend (`log.backends: [..., mlflow]`): a whole train_dir is one MLflow run.

train.py and every eval.py of a train_dir log into the run named in `mlflow_run.json`, which the
first of them to need it creates (`create_once`: of racing creators one wins, the others delete the
run they made and use the winner's). Each run folder's tags carry its name (`train/loss`,
`eval/loss`, `eval_train/accuracy`), and eval metrics carry the checkpoint's step. MLflow keeps every
point it is sent, so a process reopening at `purge_step` after a crash first reads which points the
crashed one logged at or after it and does not send those again: one point per (key, step). Texts and
images are artifacts named by step (`eval/confusion_matrix/step-000000200.png`), so a redone one
replaces itself. MLflow has no PR-curve or custom-layout view: those stay in TensorBoard.

The run's status follows the train_dir (`set_status`): RUNNING while train.py trains; FINISHED once
training finished and every checkpoint is evaluated (said by the eval.py that sees it, or by train.py
itself when no evaluator keeps a ledger); KILLED when train.py is stopped, FAILED when it fails.

The mlflow package is an optional extra, imported only when this backend is configured.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np

from shared.config import LogConfig
from shared.errors import UsageError
from shared.loggers.base import HParam, Logger
from shared.protocol.files import RECORD_BYTES, create_once, read_file
from shared.protocol.layout import TrainDir

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment, present in every tracking store
BATCH_LIMIT = 1000  # metrics per log_batch request, MLflow's own limit
PARAM_BATCH_LIMIT = 100
FLUSH_SECS = 30.0  # as the TensorBoard writer: buffered points go at least this often
# MLflow's client retries a failed request 7 times with growing back-off (minutes): too long to hold up a
# training step or an evaluation. A user's own settings win.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(options: LogConfig) -> str:
    return options.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def check(options: LogConfig) -> None:
    """At start: the package is installed and the tracking server answers, or one line naming the fix."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError(
            "log.backends lists mlflow, but the mlflow package is not installed; "
            "pip install -e '.[mlflow]', or drop mlflow from log.backends"
        ) from None
    uri = tracking_uri(options)
    if not uri:
        raise UsageError(
            "log.backends lists mlflow, but no tracking server is set; "
            "set log.mlflow_tracking_uri (e.g. http://127.0.0.1:5000) or MLFLOW_TRACKING_URI"
        )
    if uri.startswith(("http://", "https://")):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except (URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise UsageError(
                f"log.mlflow_tracking_uri {uri}: no MLflow server answers ({reason}); start it "
                "(mlflow server --host 127.0.0.1 --port 5000) or fix the address"
            ) from None


def connect(options: LogConfig) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri(options))


def open_run(options: LogConfig, train_dir: TrainDir, run_name: str, purge_step: int | None) -> MlflowLogger:
    client = connect(options)
    return MlflowLogger(client, shared_run_id(client, train_dir, tracking_uri(options)), run_name, purge_step)


def set_status(options: LogConfig, train_dir: TrainDir, status: str) -> None:
    """The train_dir's run RUNNING again, or ended FINISHED, KILLED or FAILED; nothing before any process
    of the train_dir has logged to MLflow. A server that fails costs a warning, as a lost point does."""
    from mlflow.exceptions import MlflowException

    try:
        run_id = json.loads(read_file(train_dir.mlflow_run, RECORD_BYTES))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no run yet, or a damaged record, which opening the run reports
    client = connect(options)
    try:
        if status == "RUNNING":
            client.update_run(run_id, status=status)
        else:
            client.set_terminated(run_id, status)
    except (MlflowException, OSError) as err:
        log.warning("MLflow run %s: could not mark it %s: %s", run_id, status, str(err).splitlines()[0])


def shared_run_id(client: MlflowClient, train_dir: TrainDir, uri: str) -> str:
    """The train_dir's MLflow run, created by the first process to ask; checked to exist on this server."""
    from mlflow.exceptions import MlflowException

    path = train_dir.mlflow_run
    if not path.exists():
        run = client.create_run(DEFAULT_EXPERIMENT_ID, run_name=train_dir.root.resolve().name)
        record = {"run_id": run.info.run_id, "tracking_uri": uri}
        if not create_once(path, (json.dumps(record) + "\n").encode()):
            client.delete_run(run.info.run_id)  # another process of this train_dir created it first
    try:
        run_id = json.loads(read_file(path, RECORD_BYTES))["run_id"]
        client.get_run(run_id)
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is damaged; remove it to log into a new MLflow run") from None
    except MlflowException as err:
        raise UsageError(
            f"{path} names MLflow run {run_id}, which {uri} cannot give ({err.error_code}); point "
            "log.mlflow_tracking_uri at the server that holds it, or remove the file to start a new run"
        ) from None
    return run_id


class MlflowLogger(Logger):
    """One run folder's records in the train_dir's MLflow run, keys prefixed `<run_name>/`; HParams as the
    run's parameters. No PR curves or layout: MLflow has no view for them (the TensorBoard run has them)."""

    def __init__(self, client: MlflowClient, run_id: str, run_name: str, purge_step: int | None) -> None:
        self.client, self.run_id, self.prefix = client, run_id, f"{run_name}/"
        self._pending: list[Metric] = []
        self._flushed_at = time.monotonic()
        self._logged = set() if purge_step is None else self._points_since(purge_step)

    def _points_since(self, purge_step: int) -> set[tuple[str, int]]:
        """(key, step) of this run folder's points at or after purge_step: what a crashed process sent."""
        keys = [key for key in self.client.get_run(self.run_id).data.metrics if key.startswith(self.prefix)]
        return {
            (key, point.step)
            for key in keys
            for point in self.client.get_metric_history(self.run_id, key)
            if point.step >= purge_step
        }

    def scalar(self, tag: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        key = self.prefix + tag
        if (key, step) in self._logged:
            return
        self._logged.add((key, step))
        self._pending.append(Metric(key, float(value), int(time.time() * 1000), step))
        if len(self._pending) >= BATCH_LIMIT or time.monotonic() - self._flushed_at >= FLUSH_SECS:
            self.flush()

    def text(self, tag: str, markdown: str, step: int) -> None:
        self._send(f"text {tag}", self.client.log_text, self.run_id, markdown, self._artifact(tag, step, "md"))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._send(f"image {tag}", self.client.log_image, self.run_id, image, artifact_file=self._artifact(tag, step))

    def hparams(self, values: Mapping[str, HParam]) -> None:
        """MLflow parameters, which a run keeps for life: a changed value is refused, with a warning."""
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in values.items()]
        for start in range(0, len(params), PARAM_BATCH_LIMIT):
            self._send(
                "parameters", self.client.log_batch, self.run_id, params=params[start : start + PARAM_BATCH_LIMIT]
            )

    def flush(self) -> None:
        """Send the buffered points; if the server fails, they stay buffered for the next flush."""
        while self._pending:
            batch = self._pending[:BATCH_LIMIT]
            if not self._send(f"{len(batch)} metric points", self.client.log_batch, self.run_id, metrics=batch):
                return
            del self._pending[:BATCH_LIMIT]
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush()

    def _artifact(self, tag: str, step: int, extension: str = "png") -> str:
        return f"{self.prefix}{tag}/step-{step:09d}.{extension}"

    def _send(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """One request to the server; a failure is a warning, never the end of training or evaluation."""
        from mlflow.exceptions import MlflowException

        try:
            call(*args, **kwargs)
        except (MlflowException, OSError) as err:
            log.warning("MLflow run %s: could not log %s: %s", self.run_id, what, str(err).splitlines()[0])
            return False
        return True
