"""Clocks that disagree across hosts, made for real with libfaketime: evaluators 20 minutes apart share a
train_dir's claims, and TensorBoard event files written by clocks that differ or step back keep every point
(train.py resumed on a clock hours behind: tests/test_tensorboard.py).

No file's time is ever compared with another host's clock: a claim is live while it keeps changing as the
watcher sees it (docs/protocol.md, "Several evaluators"); an event file's name orders it after the run's
newest file whatever the writer's clock says (docs/protocol.md, "One point per step").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator

from shared.loggers.event_files import read_events
from shared.protocol.claims import ClaimInfo, claim_name, claim_step
from shared.protocol.layout import TrainDir, checkpoint_name, is_event_file
from shared.protocol.ledger import read_records
from shared.protocol.outcomes import outcome_steps
from tests.conftest import SHORT_RUN, START_GUARD, Proc, finished_run, process_starter, skewed, steps_by_tag, wait_until
from tests.warm_cli import WarmCli

STEPS = list(range(10, 61, 10))  # the checkpoints of `trained`
TIMEOUT = 3  # eval.claim_timeout_secs: a dead claim is taken over this long after it was first seen unchanged


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Path:
    """A finished run with 6 checkpoints and no evaluation yet (its clock is this host's: a warm start); tests
    copy it. Two evaluators share them while the live claim on step 10 keeps both waiting."""
    steps = ["train.steps=60", "checkpoint.every_steps=10", "checkpoint.max_to_keep=100"]
    train = [*SHORT_RUN, *(arg for s in steps for arg in ("--set", s))]
    return finished_run(tmp_path_factory.mktemp("trained"), warm_scripts, train).root


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Cold processes only: libfaketime must be preloaded before the interpreter starts."""
    with process_starter(tmp_path) as starter:
        yield starter


# Another host's evaluator that is alive: it holds a claim and keeps it fresh (its host name is all that makes it
# another host's: this machine's pids then mean nothing to the others), until it gets SIGUSR1 and `hold`
# seconds have passed since (the hold is the timer under test: longer than the claim timeout); then it says
# whether its claim was still its own, and gives it up.
HOLDER = """
import signal, sys, time
from pathlib import Path
from shared.protocol.claims import ClaimInfo, Claims
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # kept pending for sigwait, in every thread
folder, step, hold = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
claims = Claims(folder, timeout=float(sys.argv[4]), evaluator="another-host:live")
claims.host = "another-host"
assert claims.try_claim(step)
mine = ClaimInfo.read(claims.path(step)).token
print("claimed", flush=True)
with claims.kept_fresh(step):
    signal.sigwait({signal.SIGUSR1})
    time.sleep(hold)
held = claims.path(step).exists() and ClaimInfo.read(claims.path(step)).token == mine
print("kept" if held else "taken over", flush=True)
claims.release(step)
"""


def test_evaluators_20_minutes_apart_take_over_a_dead_claim_and_never_a_live_one(
    tmp_path: Path, trained: Path, start
) -> None:
    """A claim on step 20 left by a dead evaluator of another host, and one on step 10 held by a live one.
    First an evaluator 10 minutes behind this host: before, it never took the dead claim over (its mtime
    looked 10 minutes ahead); now it does, once it has seen it unchanged for the timeout. Then one 10
    minutes ahead joins: before, it took the live claim over at once (its mtime looked 10 minutes old); now
    it never does while it is refreshed. Every checkpoint ends with one record."""
    train_dir = TrainDir(tmp_path / "run")
    shutil.copytree(trained, train_dir.root)
    train_dir.claims.mkdir(parents=True)
    dead = ClaimInfo(host="another-host", pid=4242, started=time.time(), evaluator="another-host:4242")
    train_dir.claims.joinpath(claim_name(20)).write_text(json.dumps(dead.__dict__))
    holder = start("-c", HOLDER, str(train_dir.claims), "10", str(4 * TIMEOUT), str(TIMEOUT))
    wait_until(lambda: "claimed" in holder.output(), START_GUARD, "the live evaluator to claim step 10")
    args = ["--train-dir", str(train_dir.root), "--poll", "0.2"]
    args += ["--set", f"eval.claim_timeout_secs={TIMEOUT}", "--set", "eval.rescan_secs=0.5"]
    behind = start("eval.py", *args, env=skewed(-600))
    wait_until(lambda: "step 20: taking over" in behind.output(), START_GUARD, "the evaluator behind to take step 20")
    ahead = start("eval.py", *args, env=skewed(600))
    wait_until(lambda: "evaluating" in ahead.output(), START_GUARD, "the evaluator ahead to start")
    holder.signal(signal.SIGUSR1)  # the live one holds its claim 4x the timeout longer, watched by both
    assert holder.wait() == 0, holder.output()
    assert holder.output().split() == ["claimed", "kept"], ahead.output()
    for evaluator in (behind, ahead):
        assert evaluator.wait() == 0, evaluator.output()

    records = [json.loads(line) for line in train_dir.results.read_text().splitlines()]
    assert [r["step"] for r in records] == STEPS
    assert all(r["status"] == "ok" for r in records), records
    assert "step 20: taking over its claim (another-host:4242 has been silent for" in behind.output()
    logs = behind.output() + ahead.output()
    assert logs.count("taking over its claim") == 1, logs
    assert "Traceback" not in logs
    assert not outcome_steps(train_dir.pending), "an outcome was left unrecorded"
    assert not [n for n in os.listdir(train_dir.pending) if n.endswith(".tmp")], "an outcome temp was left"
    assert not [n for n in os.listdir(train_dir.claims) if claim_step(n) is not None], "a claim outlived its record"


def test_the_eval_curves_keep_every_step_after_a_recorder_hours_behind_and_a_cut_event_file(
    tmp_path: Path, trained: Path, start
) -> None:
    """A recorder on this host's clock is SIGKILLed after 3 records, and its event file is cut in the middle
    of a record (the points after the cut are gone; the ledger has them). The next recorder's clock is 3 hours
    behind. Before: its file was named to be read first, so the first file's restart record hid its points in
    the legacy loader, and the cut points stayed missing for good. Now its file is read last, and at start it
    rewrote the run in step order with the lost points restored from the ledger: in both of TensorBoard's
    Python loaders every metric has one point per evaluated step."""
    train_dir = TrainDir(tmp_path / "run")
    shutil.copytree(trained, train_dir.root)
    names = tuple(f"{checkpoint_name(step).removesuffix('.pt')}." for step in STEPS[3:])  # checkpoints, weights
    later = [path for path in train_dir.checkpoints.iterdir() if path.name.startswith(names)] + [train_dir.finished]
    aside = tmp_path / "aside"  # the first recorder sees 3 checkpoints of a run still training
    aside.mkdir()
    for path in later:
        path.rename(aside / path.name)
    first = start("eval.py", "--train-dir", str(train_dir.root))
    wait_until(lambda: len(read_records(train_dir.results)) == 3, START_GUARD, "3 records")
    first.signal(signal.SIGKILL)
    first.wait()
    for path in later:
        (aside / path.name).rename(path)
    (events,) = [path for path in train_dir.eval_run.iterdir() if is_event_file(path.name)]
    records, _ = read_events(events)
    os.truncate(events, sum(len(record) for record, _ in records[: len(records) // 2]) + 5)  # 5 bytes into one

    behind = start("eval.py", "--train-dir", str(train_dir.root), env=skewed(-3 * 3600))
    assert behind.wait() == 0, behind.output()
    ledger = read_records(train_dir.results)
    assert [record["step"] for record in ledger] == STEPS
    for reader in (event_accumulator, plugin_event_accumulator):
        found = steps_by_tag(train_dir.eval_run, reader)
        missing = {tag: sorted(set(STEPS) - set(found.get(tag, []))) for tag in ledger[0]["metrics"]}
        assert not any(missing.values()), f"{reader.__name__}: steps missing {missing}"
        assert all(found[tag] == STEPS for tag in ledger[0]["metrics"]), f"{reader.__name__}: {found}"
    assert "points restored" in behind.output() and "cut short" in behind.output(), behind.output()
