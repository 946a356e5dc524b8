"""Claim files (shared/protocol/claims.py) and outcome files (shared/protocol/outcomes.py), on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from shared.protocol.artifacts import ConfusionMatrix, PerClass, PRCurves
from shared.protocol.claims import ClaimInfo, Claims
from shared.protocol.outcomes import OutcomeError, outcome_steps, read_outcome, write_outcome
from shared.protocol.results import EvalResult, SplitResult
from tests.conftest import ROOT, wait_until

TIMEOUT = 60.0
# The claim timeout of the staleness tests: a stall of the test process that long would make a live claim look
# stale, so it is generous for a busy machine; the waits for staleness are bounded polls, not sleeps.
STALE_AFTER = 2.0


def foreign_claim(claims: Claims, step: int, clock_offset: float = 0.0) -> None:
    """A claim made by an evaluator on another host (its pid means nothing here), whose clock is
    `clock_offset` seconds off ours: the mtime it leaves says so."""
    info = ClaimInfo(host="elsewhere", pid=1, started=time.time() + clock_offset, evaluator="elsewhere:1")
    claims.path(step).write_text(json.dumps(info.__dict__))
    os.utime(claims.path(step), (time.time() + clock_offset, time.time() + clock_offset))


def test_a_step_is_claimed_once(tmp_path: Path) -> None:
    mine, theirs = Claims(tmp_path, TIMEOUT, "a"), Claims(tmp_path, TIMEOUT, "b")
    assert mine.try_claim(100)
    assert not theirs.try_claim(100), "a live claim (this very process) must not be taken"
    assert ClaimInfo.read(mine.path(100)).evaluator == "a"
    assert mine.claimed_steps() == {100}
    mine.release(100)
    assert theirs.try_claim(100)


def test_a_claim_whose_owner_died_on_this_host_is_taken_over_at_once(tmp_path: Path, caplog) -> None:
    """The owner, a real process, claims and dies; its pid is gone, so the claim is stale without a timeout."""
    code = (
        "from pathlib import Path; from shared.protocol.claims import Claims; "
        f"Claims(Path({str(tmp_path)!r}), 9).try_claim(7)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    dead = ClaimInfo.read(Claims(tmp_path, TIMEOUT).path(7))
    claims = Claims(tmp_path, TIMEOUT, "survivor")
    assert f"{dead.evaluator} is dead" == claims.stale_reason(7)
    assert claims.try_claim(7)
    assert ClaimInfo.read(claims.path(7)).evaluator == "survivor"
    assert "step 7: taking over its claim" in caplog.text


def test_a_foreign_claim_is_stale_once_seen_unchanged_for_the_timeout(tmp_path: Path) -> None:
    """Whatever the owner's clock (10 minutes behind, right, 10 minutes ahead: one claim each), its claim is
    live at first sight, and stale only once this evaluator has seen it unchanged for the timeout by its own
    clock; a refresh, even to an mtime earlier than before, makes it live again."""
    claims = Claims(tmp_path, timeout=STALE_AFTER, evaluator="here")
    offsets = {5: -600.0, 6: 0.0, 7: 600.0}  # step: its owner's clock offset
    for step, clock_offset in offsets.items():
        foreign_claim(claims, step, clock_offset)
        assert claims.stale_reason(step) is None
        assert not claims.try_claim(step)
    all_stale = lambda: all([claims.stale_reason(step) is not None for step in offsets])  # noqa: E731
    wait_until(all_stale, 600, "the silent claims to go stale")
    for step in offsets:  # its owner refreshed it, its clock stepped back
        os.utime(claims.path(step), (time.time() - 3600, time.time() - 3600))
        assert claims.stale_reason(step) is None
    wait_until(all_stale, 600, "the silent claims to go stale again")
    for step in offsets:
        assert "elsewhere:1 has been silent for" in claims.stale_reason(step)
        assert claims.try_claim(step)
        assert ClaimInfo.read(claims.path(step)).evaluator == "here"


def race_for(step: int, takers: list[Claims]) -> list[str]:
    """Every taker calls try_claim(step) at the same moment (threads behind a barrier); who won."""
    barrier, won = threading.Barrier(len(takers)), []

    def take(claims: Claims) -> None:
        barrier.wait()
        if claims.try_claim(step):
            won.append(claims.evaluator)

    threads = [threading.Thread(target=take, args=(c,)) for c in takers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def stale_to_all(takers: list[Claims], step: int) -> bool:
    """Whether every taker now finds the claim stale (each one looks: the look starts its clock)."""
    return all([taker.stale_reason(step) is not None for taker in takers])


def test_racing_takeovers_of_one_stale_claim_have_one_winner(tmp_path: Path) -> None:
    """Eight evaluators find the same stale claim at once; exactly one takes it, every time."""
    for step in range(30):
        takers = [Claims(tmp_path, 0.05, f"taker-{i}") for i in range(8)]
        foreign_claim(takers[0], step)
        wait_until(partial(stale_to_all, takers, step), 30, "each taker to see it unchanged long enough", 0.01)
        won = race_for(step, takers)
        assert len(won) == 1, f"step {step}: {won}"
        assert ClaimInfo.read(takers[0].path(step)).evaluator == won[0]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".old")], "a takeover left its tomb"


def test_what_an_evaluator_killed_mid_claim_left_is_removed_and_nothing_else(tmp_path: Path) -> None:
    """A real evaluator process writes its claim's temp and is SIGKILLed before linking it into place (chaos
    seed 25 left such a temp); a taker's tomb stays only while the claim it is named after is there."""
    code = (
        "import json, os, signal; from dataclasses import asdict; from pathlib import Path; "
        "from shared.protocol.claims import ClaimInfo, Claims; from shared.protocol.files import write_synced; "
        f"claims = Claims(Path({str(tmp_path)!r}), 9); path = claims.path(60); "
        "info = ClaimInfo(claims.host, os.getpid(), 0.0, claims.evaluator, claims.pid_namespace); "
        "write_synced(path.with_name(f'.{path.name}.{info.token}.tmp'), json.dumps(asdict(info)).encode()); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert killed.returncode == -9
    claims = Claims(tmp_path, TIMEOUT, "recorder")
    assert claims.try_claim(61)  # a live claim, and a tomb naming it: a taker may be at work on it
    live_tomb = f".ckpt-000000061.claim.{ClaimInfo.read(claims.path(61)).token}.old"
    left = [".ckpt-000000062.claim." + "0" * 32 + ".old", live_tomb]  # the first one's claim is gone
    for name in left:
        (tmp_path / name).touch()
    own_temp = tmp_path / f".ckpt-000000063.claim.{'1' * 32}.tmp"  # being linked by this (live) process
    own_temp.write_text(json.dumps(ClaimInfo(claims.host, os.getpid(), 0.0, "recorder", claims.pid_namespace).__dict__))
    assert len(os.listdir(tmp_path)) == 5

    claims.remove_abandoned()
    assert sorted(os.listdir(tmp_path)) == sorted([live_tomb, own_temp.name, "ckpt-000000061.claim"])


def test_a_claim_kept_fresh_is_never_stale(tmp_path: Path) -> None:
    """While its owner works, the claim's mtime keeps moving: another evaluator watching it through 12
    refreshes (3x the timeout; counted, so a slow machine only makes the watch longer) never finds it stale."""
    claims = Claims(tmp_path, timeout=STALE_AFTER)
    assert claims.try_claim(3)
    watcher, mtimes = Claims(tmp_path, timeout=STALE_AFTER, evaluator="other"), set()

    def live_through_12_refreshes() -> bool:
        assert watcher.stale_reason(3) is None
        mtimes.add(claims.path(3).stat().st_mtime_ns)
        return len(mtimes) > 12

    with claims.kept_fresh(3):  # refreshes every timeout / 4
        wait_until(live_through_12_refreshes, 600, "12 refreshes of the claim", interval=0.02)


def test_evaluators_writing_one_step_outcome_at_once_both_succeed(tmp_path: Path) -> None:
    """An owner taken for dead and its successor may write the same step's outcome at the same moment: each
    writes its own temp, so neither loses its file under the other (before: "...npz.tmp is gone")."""
    code = (
        "import sys; from pathlib import Path; from shared.protocol.outcomes import write_outcome; "
        "from shared.protocol.results import EvalResult; "
        "result = EvalResult(step=7, file='checkpoints/ckpt-000000007.pt', status='failed', reason='x'); "
        f"[write_outcome(Path({str(tmp_path)!r}), result) for _ in range(100)]"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
    errors = [writer.communicate(timeout=600)[1].decode() for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    assert read_outcome(outcome_steps(tmp_path)[7]).step == 7
    assert os.listdir(tmp_path) == ["step-000000007.npz"], "a temp was left"


def test_an_outcome_file_round_trips(tmp_path: Path) -> None:
    curves = PRCurves(["a", "b"], [[1.0, 2.0], [0.0, 3.0]], [[4.0, 0.0], [2.0, 1.0]])
    evaluation = SplitResult(
        {"loss": 0.1, "accuracy": 0.9},
        {
            "per_class_f1": PerClass(["a", "b"], [0.8, 1.0]),
            "confusion_matrix": ConfusionMatrix(["a", "b"], [[3, 1], [0, 4]]),
            "pr_curves": curves,
        },
    )
    record = EvalResult(200, "checkpoints/ckpt-000000200.pt", "ok", 1.0, 0.5, {"val": evaluation, "train": evaluation})
    write_outcome(tmp_path, record)
    write_outcome(tmp_path, EvalResult(300, "checkpoints/ckpt-000000300.pt", "skipped", 2.0, 0.0))
    assert sorted(outcome_steps(tmp_path)) == [200, 300]
    back = read_outcome(outcome_steps(tmp_path)[200])
    assert back.to_record() == record.to_record() and back.splits == {"val": evaluation, "train": evaluation}
    for split in ("val", "train"):
        assert back.splits[split].per_class_f1 == [0.8, 1.0]
        assert back.splits[split].artifacts["pr_curves"] == curves
    assert read_outcome(outcome_steps(tmp_path)[300]).splits == {}


def test_an_outcome_file_holding_a_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "step-000000100.npz"
    np.savez(path, meta=np.array([{"a": 1}], dtype=object))  # an object array is a pickle inside the zip
    with pytest.raises(OutcomeError, match="not a readable outcome file"):
        read_outcome(path)
