"""Chaos: three evaluators and the trainer on one train_dir, SIGKILLed and SIGSTOPped at random and restarted,
until the trainer finishes; then the invariants on disk (tests/chaos.py). One round here, bounded by steps and
kills; `make chaos MINUTES=10` runs rounds of the same test for 10 minutes (CHAOS_MINUTES), each with its own
seed (CHAOS_SEED sets the first: a failing round's seed replays its choices)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shared.protocol.layout import TrainDir
from tests.chaos import TRAIN, Plan, Round, check_invariants, summary

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_chaos_keeps_every_invariant(tmp_path: Path, start) -> None:
    minutes = float(os.environ.get("CHAOS_MINUTES", "0"))
    seed = int(os.environ.get("CHAOS_SEED", "25"))
    reference = TrainDir(tmp_path / "reference")  # the same run, never interrupted
    uninterrupted = start("train.py", "--train-dir", str(reference.root), *TRAIN)
    schedule = (tmp_path / "schedule.log").open("w", buffering=1)

    def say(line: str) -> None:
        print(line)
        schedule.write(line + "\n")

    rounds = []
    ends = time.monotonic() + minutes * 60
    while not rounds or time.monotonic() < ends:
        one = Round(start, TrainDir(tmp_path / f"round-{len(rounds) + 1}"), Plan(seed + len(rounds)), say)
        one.run()
        if not rounds:
            assert uninterrupted.wait_while_logging() == 0, uninterrupted.output()
        rounds.append((one, check_invariants(one.train_dir, reference)))
        say(summary(rounds))

    broken = {name: what for _, found in rounds for name, what in found.items() if what}
    assert not broken, f"{summary(rounds)}\nschedule: {schedule.name}"
    for one, _ in rounds:
        assert one.tally.kills["trainer mid-save"] and one.tally.kills["evaluator mid-evaluation"], one.tally
