"""shared.protocol.results: one EvalResult for every shape a result took on disk, and one comparison.

The fixtures in tests/fixtures/ledger-e72a6ed were written by the code of commit e72a6ed (EvalRecord,
Ledger.append, write_outcome, best/metrics.json): every format written before EvalResult must still load.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from shared.protocol.ledger import Ledger, LedgerTail, read_records, read_results
from shared.protocol.outcomes import read_outcome, write_outcome
from shared.protocol.results import EvalResult, RecordError, SplitResult, best_of, is_better

FIXTURES = Path(__file__).parent / "fixtures" / "ledger-e72a6ed"


def test_a_ledger_written_before_evalresult_loads_with_its_first_split_first() -> None:
    results = read_results(FIXTURES / "results.jsonl")
    assert [(r.step, r.status) for r in results] == [(100, "ok"), (200, "failed"), (300, "skipped"), (400, "ok")]
    first = results[0]
    assert list(first.splits) == ["val", "train"], "the first split is the one `metrics` holds, not the sorted first"
    assert first.metrics == first.splits["val"].metrics and first.value("loss", "train") == 0.3011
    assert first.splits["val"].per_class_f1 == [0.9, 0.8, 0.88] and first.evaluator == "host:101"
    assert results[1].splits == {} and "unexpected EOF" in results[1].reason


def test_a_result_writes_the_same_ledger_line_it_was_read_from() -> None:
    lines = (FIXTURES / "results.jsonl").read_text().splitlines()
    for line, result in zip(lines, read_results(FIXTURES / "results.jsonl"), strict=True):
        assert json.dumps(result.to_record(), sort_keys=True) == line


def test_a_ledger_appended_to_reads_back_equal(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "results.jsonl")
    for result in read_results(FIXTURES / "results.jsonl"):
        ledger.append(result)
    assert (tmp_path / "results.jsonl").read_bytes() == (FIXTURES / "results.jsonl").read_bytes()


def test_outcome_files_written_before_evalresult_load_and_round_trip(tmp_path: Path) -> None:
    result = read_outcome(FIXTURES / "pending" / "step-000000100.npz")
    assert list(result.splits) == ["val", "train"] and result.splits["val"].confusion_matrix[0] == [3, 1, 0]
    curves = result.splits["train"].artifacts["pr_curves"]  # its 12 examples' probabilities, binned as now
    assert len(curves.positives) == 3 and sum(map(sum, curves.positives)) == 12
    assert result.to_record() == read_results(FIXTURES / "results.jsonl")[0].to_record()
    again = read_outcome(write_outcome(tmp_path, result))
    assert again == result and again.to_record() == result.to_record()
    skipped = read_outcome(FIXTURES / "pending" / "step-000000300.npz")
    assert (skipped.status, skipped.splits) == ("skipped", {})


def test_best_metrics_json_written_before_evalresult_loads() -> None:
    summary = json.loads((FIXTURES / "metrics.json").read_text())
    held = EvalResult.from_record(summary | {"status": "ok"})
    assert (held.step, held.value("accuracy")) == (400, 0.9)


def _ok(step: int, **metrics: float) -> EvalResult:
    return EvalResult(step, f"checkpoints/ckpt-{step:09d}.pt", "ok", splits={"val": SplitResult(metrics)})


def test_is_better_takes_the_direction_and_the_margin() -> None:
    assert is_better(0.9, 0.8, higher_is_better=True) and not is_better(0.9, 0.8, higher_is_better=False)
    assert is_better(0.1, 0.2, higher_is_better=False, min_delta=0.05)
    assert not is_better(0.17, 0.2, higher_is_better=False, min_delta=0.05)
    assert not is_better(math.nan, -math.inf, higher_is_better=True)


def test_best_of_prefers_the_better_value_then_the_earlier_step() -> None:
    results = [_ok(10, loss=0.5), _ok(20, loss=0.3), _ok(30, loss=0.3), EvalResult(40, "f", "failed")]
    assert best_of(results, "loss", higher_is_better=False).step == 20
    assert best_of(results, "loss", higher_is_better=True).step == 10
    assert best_of(results, "accuracy", higher_is_better=True) is None
    assert _ok(5, accuracy=0.1).beats(_ok(1, loss=0.1), "accuracy", True), "a result with the metric beats one without"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (7, "a JSON int"),
        ({"status": "ok"}, "step None"),
        ({"step": None, "status": "ok"}, "step None"),
        ({"step": "120", "status": "ok"}, "step '120'"),
        ({"step": True, "status": "ok"}, "step True"),
        ({"step": -1, "status": "ok"}, "step -1"),
        ({"step": 3, "status": "done"}, "status 'done'"),
        ({"step": 3, "status": "ok", "metrics": {"loss": "low"}}, "not an object of numbers"),
        ({"step": 3, "status": "ok", "split_metrics": [1]}, "split_metrics is not an object"),
    ],
)
def test_a_record_of_the_wrong_shape_is_refused_with_the_reason(record: object, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        EvalResult.from_record(record)


DAMAGED = [b"7", b'{"status": "ok"}', b'{"step": null, "status": "ok"}', b'{"step": "x", "status": "ok"}', b"\xff\xfe"]


def test_every_ledger_reader_skips_a_bad_line_with_one_warning(tmp_path: Path, caplog) -> None:
    """read_results, the evaluator's Ledger and train.py's LedgerTail skip each bad line; a process that has
    several of them warns once per line, naming it."""
    good = (FIXTURES / "results.jsonl").read_bytes().splitlines()
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join([good[0], *DAMAGED, good[1]]) + b"\n")
    caplog.set_level(logging.WARNING)
    assert [r.step for r in read_results(path)] == [100, 200]
    assert sorted(Ledger(path).results) == [100, 200]
    assert [r.step for r in LedgerTail(path).poll()] == [100, 200]
    warned = sorted(r.getMessage() for r in caplog.records)
    assert [w.split(" ")[0] for w in warned] == [f"{path}:{n}" for n in range(2, 7)], warned
    assert len(read_records(path)) == 6, "the JSON lines, whatever their shape (read_records is for any JSONL)"


def test_the_tail_warns_about_a_bad_line_once(tmp_path: Path, caplog) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"7\n")
    tail = LedgerTail(path)
    caplog.set_level(logging.WARNING)
    assert tail.poll() == [] and tail.poll() == []
    assert len(caplog.records) == 1 and tail.newest == -1 and tail.steps == set()


def test_a_nan_metric_keeps_its_split_first() -> None:
    """A first split whose loss is NaN is still found first (NaN != NaN as a float, not as JSON)."""
    nan = {"loss": math.nan, "accuracy": 0.1}
    record = {"step": 1, "status": "ok", "metrics": nan, "split_metrics": {"train": {"loss": 0.2}, "val": nan}}
    assert list(EvalResult.from_record(json.loads(json.dumps(record))).splits) == ["val", "train"]
