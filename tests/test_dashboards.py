"""The dashboard writers on their own: once-per-run layout, HParams values, and eval_lag's ledger reading."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.loggers.dashboards import hparam_values, write_train_header
from shared.loggers.tensorboard import TensorBoardLogger
from shared.protocol.files import append_line
from shared.protocol.layout import TrainDir
from shared.runtime.health import check_heartbeat
from shared.tasks.loading import load_config
from shared.training.ledger_reader import LedgerReader
from tests.conftest import ROOT


def test_layout_is_written_on_a_fresh_start_only_and_the_config_on_every_start(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "digits.yaml")
    for step in (0, 300):  # a fresh start, then a resume from step 300
        with TensorBoardLogger(tmp_path, purge_step=step + 1) as writer:
            write_train_header(writer, config, step)
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Tensors("custom_scalars__config__")] == [0]
    assert [e.step for e in accumulator.Tensors("config/text_summary")] == [0, 300]


def test_hparams_are_the_training_options_as_plain_values() -> None:
    config = load_config(ROOT / "configs" / "digits.yaml", ["train.lr=0.01"])
    values = hparam_values(config)
    assert values["train.lr"] == 0.01 and values["train.optimizer"] == "adamw" and values["task"] == "digits"
    assert not any(key.startswith(("eval.", "checkpoint.", "log.")) for key in values)
    assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values.values())


def test_eval_lag_follows_the_ledger(tmp_path: Path) -> None:
    train_dir = TrainDir(tmp_path)
    ledger = train_dir.results
    reader = LedgerReader(train_dir)

    def lag_at(step: int) -> int | None:
        reader.poll()
        return reader.lag(step)

    assert lag_at(50) is None, "no ledger: no evaluator to lag behind"
    ledger.parent.mkdir()
    ledger.touch()
    assert lag_at(50) == 50, "an evaluator with nothing done yet is the whole run behind"
    append_line(ledger, '{"step": 40, "status": "ok"}')
    assert lag_at(90) == 50
    append_line(ledger, '{"step": 80, "status": "failed"}')  # a failed step is done too: it is not retried
    assert lag_at(90) == 10


@pytest.mark.parametrize("bad", ["", "{", '{"step": 1}'])
def test_heartbeat_check_fails_on_a_broken_heartbeat(tmp_path: Path, bad: str) -> None:
    TrainDir(tmp_path).heartbeat.write_text(bad)
    assert check_heartbeat(tmp_path, max_age=60).startswith("no readable heartbeat")
