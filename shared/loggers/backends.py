"""Which backends a run's summaries go to (`log.backends`), and opening them as one `Logger`.

A new backend is one module with a `Logger` subclass, plus one entry in OPENERS (and in CHECKS if it
can fail at start, in STATUSES if its runs have a status); train.py and eval.py do not change.
docs/logging.md says what it must promise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from shared.config import Config, LogConfig
from shared.loggers import mlflow_backend
from shared.loggers.base import Fanout, Logger, NullLogger
from shared.loggers.event_files import Point
from shared.loggers.tensorboard import TensorBoardLogger
from shared.protocol.layout import TrainDir

# name -> opener(log options, train_dir, run folder, purge_step, known scalars); purge_step None: a run never
# redone (ad hoc). MLflow's server keeps every point it was sent, so it has no use for the known scalars.
OPENERS: dict[str, Callable[[LogConfig, TrainDir, Path, int | None, Mapping[Point, float]], Logger]] = {
    "tensorboard": lambda options, train_dir, run_dir, purge_step, known: TensorBoardLogger(run_dir, purge_step, known),
    "mlflow": lambda options, train_dir, run_dir, purge_step, known: mlflow_backend.open_run(
        options, train_dir, run_dir.name, purge_step
    ),
}
# name -> a check at start: a backend that cannot work is one line and exit 2 before any work is done.
CHECKS: dict[str, Callable[[LogConfig], None]] = {"mlflow": mlflow_backend.check}
# name -> marks the train_dir's run RUNNING, FINISHED, KILLED or FAILED, for backends whose runs have a status.
STATUSES: dict[str, Callable[[LogConfig, TrainDir, str], None]] = {"mlflow": mlflow_backend.set_status}


def check_backends(config: Config) -> None:
    for name in dict.fromkeys(config.log.backends):
        if name in CHECKS:
            CHECKS[name](config.log)


def open_run(
    config: Config,
    train_dir: TrainDir,
    run_dir: Path,
    purge_step: int | None,
    enabled: bool = True,
    known: Mapping[Point, float] | None = None,
) -> Logger:
    """The logger of one run folder (train/, eval/, eval_<split>/, eval_adhoc/) in every configured backend.

    `purge_step`: the first step this process logs; each backend drops what a crashed writer logged from
    there on (one writer per run). `known`: (tag, step) -> value of scalars the run must hold before
    purge_step, from a record kept elsewhere (the eval ledger); a backend that lost some writes them back.
    Not `enabled` (torchrun ranks other than 0): a logger that keeps nothing.
    """
    if not enabled:
        return NullLogger()
    names = dict.fromkeys(config.log.backends)  # a backend listed twice is opened once: one writer per run
    loggers = [OPENERS[name](config.log, train_dir, run_dir, purge_step, known or {}) for name in names]
    return loggers[0] if len(loggers) == 1 else Fanout(loggers)


def mark_run(config: Config, train_dir: TrainDir, status: str) -> None:
    """The train_dir's run status, in the backends that keep one: RUNNING, FINISHED, KILLED or FAILED."""
    for name in dict.fromkeys(config.log.backends):
        if name in STATUSES:
            STATUSES[name](config.log, train_dir, status)


@contextlib.contextmanager
def running(config: Config, train_dir: TrainDir, enabled: bool = True) -> Iterator[None]:
    """train.py's run: RUNNING from here on, KILLED if interrupted at once (a second Ctrl-C), FAILED if what
    this wraps raises; how a run that comes through ends is for the caller to say (`mark_run`)."""
    if enabled:
        mark_run(config, train_dir, "RUNNING")
    try:
        yield
    except BaseException as err:
        if enabled:
            mark_run(config, train_dir, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
