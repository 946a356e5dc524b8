"""Several eval.py daemons on one train_dir, as real processes beside a real train.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shared.evaluation.export import read_best
from shared.protocol.claims import ClaimInfo, claim_step
from shared.protocol.layout import TrainDir
from shared.protocol.outcomes import outcome_steps
from tests.conftest import SHORT_RUN, START_GUARD, Proc, scalar_points, wait_until
from tests.test_end_to_end import EVAL_TAGS, assert_one_point_per_evaluated_step

pytestmark = pytest.mark.slow

# 20 checkpoints of a small digits model, written quickly; evaluating in batches of 4 is slow enough
# (about a second) for three evaluators to overlap, and for one to be killed while it works. One thread
# per process: five processes share the CI machine's cores.
RUN = [
    *SHORT_RUN,
    "--set", "model.channels=4",
    "--set", "model.hidden=16",
    "--set", "data.batch_size=16",
    "--set", "train.steps=200",
    "--set", "checkpoint.every_steps=10",
    "--set", "checkpoint.max_to_keep=100",
]  # fmt: skip
EVAL = ["--set", "eval.batch_size=4", "--set", "eval.rescan_secs=0.5"]
SPLITS = ["--set", "eval.splits=[val, train]", "--set", "eval.max_examples=200"]  # two runs: eval/, eval_train/
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def claim_held_by(train_dir: TrainDir, proc: Proc) -> int | None:
    """A step `proc` has claimed and is still evaluating (no outcome yet), or None."""
    waiting = outcome_steps(train_dir.pending)
    for name in os.listdir(train_dir.claims) if train_dir.claims.exists() else []:
        step = claim_step(name)
        if step is None or step in waiting:
            continue
        try:
            info = ClaimInfo.read(train_dir.claims / name)
        except FileNotFoundError:
            continue
        if info is not None and info.pid == proc.popen.pid:
            return step
    return None


def test_three_evaluators_share_twenty_checkpoints_and_survive_a_kill(tmp_path: Path, start) -> None:
    """3 evaluators (one on inotify, two polling; two evaluation splits), 20 checkpoints; one is SIGKILLed
    while it evaluates a claimed checkpoint. Every checkpoint ends with one ok ledger record and one point
    per tag in each split's run, the killed one's claim is taken over by another, and more than one
    evaluator did the work."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    polls = [[], ["--poll", "0.2"], ["--poll", "0.2"]]
    evaluators = [
        start("eval.py", "--train-dir", str(train_dir.root), *EVAL, *SPLITS, *poll, env=ONE_THREAD) for poll in polls
    ]
    trainer = start("train.py", "--train-dir", str(train_dir.root), *RUN, env=ONE_THREAD)
    # Whichever evaluator is first seen evaluating a claimed checkpoint is the one killed: which one gets
    # there first (the recorder also draws its figures at start) is up to the scheduler.
    found: list[tuple[Proc, int]] = []

    def claimed() -> bool:
        found.extend((e, step) for e in evaluators if (step := claim_held_by(train_dir, e)) is not None)
        return bool(found) or all(e.popen.poll() is not None for e in evaluators)

    wait_until(claimed, START_GUARD, "an evaluator to hold a claim", interval=0.01)
    assert found, "every checkpoint was evaluated before any claim was seen: nothing to kill"
    victim, killed_step = found[0]
    victim.signal(signal.SIGKILL)
    victim.wait()

    assert trainer.wait() == 0, trainer.output()
    survivors = [e for e in evaluators if e is not victim]
    for survivor in survivors:
        assert survivor.wait() == 0, survivor.output()

    records = assert_one_point_per_evaluated_step(train_dir)
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    for tag in EVAL_TAGS:  # the second split's run too: one point per step, written by the recorder alone
        expected = [(r["step"], pytest.approx(r["split_metrics"]["train"][tag], rel=1e-6)) for r in records]
        assert scalar_points(train_dir.split_run("train"), tag) == expected, tag
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"]
    by_step = {r["step"]: r["evaluator"] for r in records}
    assert not by_step[killed_step].endswith(f":{victim.popen.pid}"), "the killed evaluator's step was not redone"
    assert any(f"step {killed_step}: taking over its claim" in survivor.output() for survivor in survivors)
    assert len(set(by_step.values())) > 1, f"one evaluator did all the work: {by_step}"
    assert not outcome_steps(train_dir.pending), "an outcome was left unrecorded"
    assert not [n for n in os.listdir(train_dir.claims) if claim_step(n) is not None], "a claim outlived its record"
    assert read_best(train_dir)["step"] in by_step  # exported by whichever evaluator scored it, under a flock
