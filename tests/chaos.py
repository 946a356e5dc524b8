"""Chaos on one train_dir: a trainer and several evaluators SIGKILLed and SIGSTOPped at random, restarted as a
supervisor would, then the invariants checked on disk. tests/test_chaos.py runs one round in the suite;
`make chaos MINUTES=N` runs rounds of the same code for N minutes.

Every choice (whom, what, when, how long) comes from one seeded RNG, printed with the schedule as it runs, so a
failing round can be replayed with its seed (CHAOS_SEED); the moments themselves are the machine's. Kills are
aimed, not only timed: some wait until the trainer is writing a checkpoint (its temp file is there) or an
evaluator holds a claim it is still evaluating, and the outcome says where each landed.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records, read_results
from shared.protocol.outcomes import outcome_steps
from shared.protocol.results import STATUSES, best_of
from tests.conftest import SHORT_RUN, Proc, newest_step, scalar_points, temp_files
from tests.test_evaluators import claim_held_by

STEPS, EVERY, LOG_EVERY = 400, 10, 5
# A small digits model whose 40 checkpoints come faster than three evaluators score them (batches of 4), so
# the evaluators are behind and busy while the trainer runs; retention keeps 3, and 10 the ledger has not
# reached yet, so it deletes checkpoints under the evaluators throughout, and past them when they fall 13
# behind, where the trainer waits (max_eval_lag): on a fast machine it would otherwise finish before the
# schedule's kills came.
TRAIN = [
    *SHORT_RUN,
    "--set", "model.channels=4",
    "--set", "model.hidden=16",
    "--set", "data.batch_size=16",
    "--set", f"train.steps={STEPS}",
    "--set", f"checkpoint.every_steps={EVERY}",
    "--set", "checkpoint.max_to_keep=3",
    "--set", "checkpoint.max_unevaluated=10",
    "--set", "train.max_eval_lag=12",
    "--set", f"log.every_steps={LOG_EVERY}",
]  # fmt: skip
# A short claim timeout, so that a SIGSTOP longer than it gets the stopped evaluator's claim taken over (and
# its late outcome written beside its successor's); two splits, so two eval runs are checked.
EVAL = [
    "--set", "eval.batch_size=4",
    "--set", "eval.max_examples=120",
    "--set", "eval.splits=[val, train]",
    "--set", "eval.rescan_secs=0.5",
    "--set", "eval.claim_timeout_secs=2",
]  # fmt: skip
EVAL_WATCHES = [[], ["--poll", "0.2"], ["--poll", "0.2"]]  # one on inotify, two polling
BEST_METRIC = "accuracy"
STALL = "every evaluator"  # the target of a stall
# A hang guard: nothing on disk or in any log changed for this long. Not a speed bound.
SILENCE = 180


@dataclass(frozen=True)
class Plan:
    """How much chaos a round makes, counted in kills and stops, not in seconds."""

    seed: int
    trainer_kills: int = 6
    trainer_stops: int = 3
    evaluator_kills: int = 8
    evaluator_stops: int = 6
    longest_stop: float = 4.0  # seconds; longer than the claim timeout, so some stopped claims are taken over
    stalls: int = 1  # every evaluator stopped at once (a preempted evaluation node) while the trainer goes on
    longest_stall: float = 10.0  # seconds: checkpoints pile up past checkpoint.max_unevaluated


@dataclass(frozen=True)
class Action:
    """One entry of a round's schedule: `what` to do to `target` once the run got `at` far (the trainer's: its
    newest checkpoint step; an evaluator's: the ledger's number of records), drawn from the seed up front."""

    target: str
    what: str  # "kill" or "stop"
    at: int
    aimed: bool  # a kill: at a checkpoint write / an evaluation (else at a random moment)
    moment: float  # a kill: seconds after the aim was met (or after `at`); a stop: its length
    restart_after: float  # a kill: the supervisor's delay before it starts the same command again

    def __str__(self) -> str:
        where = "aimed" if self.aimed else "anywhere"
        how = f"{where}, +{self.moment:.2f}s, restart after {self.restart_after:.2f}s" if self.what == "kill" else ""
        unit = "step" if self.target in ("trainer", STALL) else "records"
        return f"{unit} {self.at:3}: {self.what} {self.target} ({how or f'{self.moment:.2f}s'})"


def draw_schedule(plan: Plan, rng: random.Random) -> list[Action]:
    """The trainer's actions at distinct checkpoint steps before the last (so each incarnation it kills has
    committed a checkpoint of its own, and the run makes progress); the evaluators' at numbers of records
    up to 90% of the checkpoints (so they come while there is work: from start-up to the drain)."""
    steps = rng.sample(range(EVERY, STEPS, EVERY), plan.trainer_kills + plan.trainer_stops)
    kinds = ["kill"] * plan.trainer_kills + ["stop"] * plan.trainer_stops
    rng.shuffle(kinds)
    actions = [_action(rng, plan, "trainer", kind, at) for kind, at in zip(kinds, sorted(steps), strict=True)]
    for at in rng.sample(range(EVERY, STEPS // 2, EVERY), plan.stalls):
        actions.append(Action(STALL, "stop", at, False, rng.uniform(plan.longest_stop, plan.longest_stall), 0.0))
    kinds = ["kill"] * plan.evaluator_kills + ["stop"] * plan.evaluator_stops
    rng.shuffle(kinds)
    for kind in kinds:
        target = f"eval-{rng.randrange(len(EVAL_WATCHES))}"
        actions.append(_action(rng, plan, target, kind, rng.randrange(int(0.9 * STEPS / EVERY))))
    return sorted(actions, key=lambda a: (a.target not in ("trainer", STALL), a.at))


def _action(rng: random.Random, plan: Plan, target: str, what: str, at: int) -> Action:
    if what == "stop":
        return Action(target, what, at, False, rng.uniform(0.1, plan.longest_stop), 0.0)
    aimed = rng.random() < 0.5
    return Action(target, what, at, aimed, rng.uniform(0, 0.3 if aimed else 1.0), rng.uniform(0, 1.5))


@dataclass
class Member:
    """One process of the round, restarted with the same command after each kill."""

    name: str
    script: str
    args: list[str]
    proc: Proc | None = None
    starts: int = 0
    stopped_until: float | None = None
    restart_at: float | None = None
    done: bool = False  # exited 0 by itself

    def running(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None


@dataclass
class Tally:
    kills: Counter[str] = field(default_factory=Counter)  # by where they landed
    stops: int = 0
    restarts: int = 0
    started: Counter[str] = field(default_factory=Counter)  # processes by script
    not_done: list[str] = field(default_factory=list)  # actions whose moment never came, or whose target was gone

    def total_kills(self) -> int:
        return sum(self.kills.values())


class Round:
    """One chaos round on `train_dir`: start, wreck and drain (`run`); then check_invariants."""

    def __init__(self, start: Callable[..., Proc], train_dir: TrainDir, plan: Plan, say: Callable[[str], None]):
        self.start, self.train_dir, self.plan, self.say = start, train_dir, plan, say
        self.rng = random.Random(plan.seed)
        self.schedule = draw_schedule(plan, self.rng)
        self.tally = Tally()
        self.began = time.monotonic()
        root = str(train_dir.root)
        self.trainer = Member("trainer", "train.py", ["--train-dir", root, *TRAIN])
        self.evaluators = [
            Member(f"eval-{n}", "eval.py", ["--train-dir", root, *EVAL, *watch]) for n, watch in enumerate(EVAL_WATCHES)
        ]
        self.members = [*self.evaluators, self.trainer]
        self._progress: tuple = ()
        self._progress_at = self._tended_at = time.monotonic()

    def log(self, what: str) -> None:
        self.say(f"[{time.monotonic() - self.began:7.2f}s] {what}")

    # -- the processes ------------------------------------------------------------------------------------

    def launch(self, member: Member) -> None:
        member.proc = self.start(member.script, *member.args)
        member.starts += 1
        member.restart_at = member.stopped_until = None
        self.tally.started[member.script] += 1
        self.tally.restarts += member.starts > 1
        self.log(f"{'restarted' if member.starts > 1 else 'started'} {member.name} (pid {member.proc.popen.pid})")

    def tend(self) -> None:
        """What a supervisor does at each look: wake the processes whose stop is over, restart the killed ones
        when their turn comes, and fail on any exit that is neither ours (SIGKILL) nor a clean 0."""
        now = time.monotonic()
        for member in self.members:
            if member.stopped_until is not None and now >= member.stopped_until and member.running():
                member.proc.signal(signal.SIGCONT)
                member.stopped_until = None
                self.log(f"SIGCONT {member.name}")
            if member.restart_at is not None:
                if now >= member.restart_at:
                    self.launch(member)
                continue
            if member.proc is None or member.done or member.running():
                continue
            code = member.proc.popen.poll()
            if code != 0:
                pytest.fail(f"{member.name} exited {code}, not by a kill of ours:\n{member.proc.output()[-4000:]}")
            member.done = True
            self.log(f"{member.name} exited 0")

    def wait_for(self, condition: Callable[[], bool], what: str, interval: float = 0.01) -> None:
        """Tend the processes (every 20 ms at most) until `condition` holds; fail once nothing in the
        train_dir or the logs changed for SILENCE seconds (a hang guard that a slow machine never trips)."""
        while not condition():
            if time.monotonic() - self._tended_at >= 0.02:
                self._tended_at = time.monotonic()
                self.tend()
                if (progress := self._fingerprint()) != self._progress:
                    self._progress, self._progress_at = progress, time.monotonic()
                elif time.monotonic() - self._progress_at > SILENCE:
                    pytest.fail(f"waiting for {what}: nothing changed on disk or in any log for {SILENCE}s")
            time.sleep(interval)

    def _fingerprint(self) -> tuple:
        sizes = [m.proc.log.stat().st_size for m in self.members if m.proc is not None]
        return (newest_step(self.train_dir), self.records(), *sizes)

    def records(self) -> int:
        return len(read_records(self.train_dir.results))

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.wait_for(lambda: time.monotonic() >= deadline, "a pause")

    # -- the chaos ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Start the evaluators and the trainer together, as launch.py or compose would; act on the schedule
        as the run reaches each action's moment, until the trainer has finished and the evaluators, restarted
        after every kill, have recorded everything and exited by themselves."""
        self.log(f"seed {self.plan.seed}: {self.plan}; the schedule:")
        for action in self.schedule:
            self.log(f"  {action}")
        for member in self.rng.sample(self.members, len(self.members)):  # in any order, as a supervisor may
            self.launch(member)
        pending = list(self.schedule)

        def act_or_finish() -> bool:
            for action in pending:
                if self._due(action):
                    pending.remove(action)
                    self.act(action)
                    break
            return self.trainer.done and all(m.done for m in self.evaluators)

        self.wait_for(act_or_finish, "the trainer to finish and the evaluators to record every checkpoint")
        assert json.loads(self.train_dir.finished.read_text())["step"] == STEPS, "the evaluators exited before the end"
        self.tally.not_done += [f"{a} (never came)" for a in pending]
        for action in self.tally.not_done:
            self.log(f"not done: {action}")

    def _due(self, action: Action) -> bool:
        if action.target in ("trainer", STALL):
            return self.trainer.done or newest_step(self.train_dir) >= action.at
        return self.records() >= action.at

    def act(self, action: Action, member: Member | None = None) -> None:
        if action.target == STALL and member is None:
            for evaluator in self.evaluators:
                self.act(action, evaluator)
            return
        member = member or next(m for m in self.members if m.name == action.target)
        if action.what == "kill" and not member.running() and member is not self.trainer:
            member = next((m for m in self.evaluators if m.running()), member)  # the supervisor restarts it yet
        if not member.running() or (member.stopped_until is not None and action.what == "stop"):
            self.tally.not_done.append(f"{action} ({member.name} not running{' or stopped' * (action.what == 'stop')})")
            return
        if action.what == "stop":
            member.proc.signal(signal.SIGSTOP)
            member.stopped_until = time.monotonic() + action.moment
            self.tally.stops += 1
            self.log(f"SIGSTOP {member.name} for {action.moment:.2f}s")
        elif member is self.trainer:
            self.kill_trainer(action)
        else:
            self.kill_evaluator(member, action)

    def kill_trainer(self, action: Action) -> None:
        """During a checkpoint write (its temp file is there) when aimed, or until one kill landed there;
        else at a random moment."""
        trainer = self.trainer
        if action.aimed or not self.tally.kills["trainer mid-save"]:
            self.wait_for(lambda: bool(temp_files(self.train_dir)) or not trainer.running(), "a save", 0.0005)
        else:
            self.pause(action.moment)
        landed = "mid-save" if temp_files(self.train_dir) else "between saves"
        self.kill(trainer, f"trainer {landed}", action.restart_after)

    def kill_evaluator(self, member: Member, action: Action) -> None:
        """While it evaluates a checkpoint it claimed when aimed, or until one kill landed there; else at a
        random moment (starting up, loading, recording, idle)."""
        held: list[int] = []
        # Until one landed there, no pause after the claim is seen: a quiet machine evaluates digits within it.
        first = not self.tally.kills["evaluator mid-evaluation"]
        if action.aimed or first:
            give_up = self.records() + 3  # it may not be getting any work

            def evaluating() -> bool:
                step = claim_held_by(self.train_dir, member.proc) if member.running() else None
                held.extend([] if step is None else [step])
                return bool(held) or not member.running() or self.records() >= give_up

            self.wait_for(evaluating, f"{member.name} to claim a checkpoint", 0.002)
        if not first:
            self.pause(action.moment)
        still = held and held[0] not in outcome_steps(self.train_dir.pending)
        landed = "mid-evaluation" if still and claim_held_by(self.train_dir, member.proc) == held[0] else "elsewhere"
        self.kill(member, f"evaluator {landed}", action.restart_after)

    def kill(self, member: Member, where: str, restart_after: float) -> None:
        if not member.running():
            return
        member.proc.signal(signal.SIGKILL)
        if member.proc.wait() != -signal.SIGKILL:  # it exited by itself first: the supervisor's look judges that
            return
        self.tally.kills[where] += 1
        member.restart_at = time.monotonic() + restart_after
        self.log(f"SIGKILL {member.name} ({where}; restart in {restart_after:.2f}s)")


# -- the invariants -----------------------------------------------------------------------------------------


def tensorboard_steps(run: Path) -> dict[str, list[int]]:
    """Every tag's steps, as TensorBoard's own loader keeps them (purges applied): scalars, tensors, images."""
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    steps = {tag: [e.step for e in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    steps |= {tag: [e.step for e in accumulator.Tensors(tag)] for tag in tags["tensors"]}
    return steps | {tag: [e.step for e in accumulator.Images(tag)] for tag in tags["images"]}


def check_invariants(train_dir: TrainDir, reference: TrainDir) -> dict[str, str]:
    """Each invariant's name -> "" when it holds, else what is wrong."""
    committed = list(range(EVERY, STEPS + 1, EVERY))
    records = read_records(train_dir.results)
    found: dict[str, str] = {}

    by_step = Counter(r["step"] for r in records)
    missing = [s for s in committed if not by_step[s]]
    twice = sorted(s for s, n in by_step.items() if n > 1)
    strangers = sorted(set(by_step) - set(committed))
    silent = [r["step"] for r in records if r["status"] != "ok" and not r.get("reason")]
    found["one record per committed checkpoint"] = "; ".join(
        f"{what}: {steps}"
        for what, steps in [
            ("no record", missing),
            ("recorded twice", twice),
            ("never committed", strangers),
            ("no reason", silent),
        ]
        if steps
    )

    left = [f"claims/{n}" for n in _names(train_dir.claims)] + [f"pending/{n}" for n in _names(train_dir.pending)]
    found["no claim or outcome left"] = ", ".join(left)
    temps = [f"checkpoints/{n}" for n in temp_files(train_dir)] + [
        str(path.relative_to(train_dir.root))
        for path in [*train_dir.root.glob(".best-*"), *train_dir.root.glob("*/.repair-*")]
        if path.name.endswith(".tmp") or path != train_dir.best.resolve()
    ]
    found["no temp file or older best/ left"] = ", ".join(temps)

    wrong: dict[str, list[str]] = {}  # what is wrong -> the run/tag it is wrong for
    evaluated = sorted(r["step"] for r in records if r["status"] == "ok")
    for run in (train_dir.split_run("val"), train_dir.split_run("train")):  # every tag at every evaluated step
        for tag, steps in tensorboard_steps(run).items():
            if steps != evaluated:
                wrong.setdefault(_diff(steps, evaluated), []).append(f"{run.name}/{tag}")
    expected = tensorboard_steps(reference.train_run)
    for tag, steps in tensorboard_steps(train_dir.train_run).items():
        # eval_lag, which the uninterrupted run (no ledger) has not: at every log step from the first one logged
        # after the ledger appeared (docs/protocol.md: no ledger, no eval_lag point)
        want = expected.get(tag, list(range(steps[0], STEPS + 1, LOG_EVERY)))
        if tag.startswith("config/"):  # the config text is written at every start, at the step it starts from
            want = sorted(set(steps))
        if steps != want:
            wrong.setdefault(_diff(steps, want), []).append(f"train/{tag}")
    found["one TensorBoard point per step and tag"] = "; ".join(f"{', '.join(t)}: {d}" for d, t in wrong.items())

    best, scored = read_best(train_dir), best_of(read_results(train_dir.results), BEST_METRIC, higher_is_better=True)
    same = best is not None and scored is not None and best["step"] == scored.step
    same = same and math.isclose(best["value"], scored.value(BEST_METRIC), rel_tol=1e-9)
    found["best/ is the ledger's best"] = "" if same else f"best/: {best}; the ledger's: {scored and scored.step}"

    found["resumed exactly"] = _resumed_exactly(train_dir, reference)
    return found


def _resumed_exactly(train_dir: TrainDir, reference: TrainDir) -> str:
    if scalar_points(train_dir.train_run, "loss") != scalar_points(reference.train_run, "loss"):
        return "the loss curve differs from the uninterrupted run's"
    final, wanted = (torch.load(d.checkpoint(STEPS), weights_only=True)["model"] for d in (train_dir, reference))
    differ = [name for name, weights in wanted.items() if not torch.equal(final[name], weights)]
    return f"final weights differ: {differ}" if differ else ""


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def _diff(got: list[int], want: list[int]) -> str:
    extra, lost = Counter(got) - Counter(want), Counter(want) - Counter(got)
    return f"points at steps {sorted(extra.elements())} too many, {sorted(lost.elements())} missing"


def summary(rounds: list[tuple[Round, dict[str, str]]]) -> str:
    """A row per round and their total (processes started, kills, stops, restarts, checkpoints, records by
    status, invariants held), where the kills landed, and each invariant: held, or what broke it."""
    head = ["round", "seed", "processes", "kills", "stops", "restarts", "checkpoints", *STATUSES, "held"]
    rows, landed = [], Counter()
    for n, (one, found) in enumerate(rounds, 1):
        records = Counter(r["status"] for r in read_records(one.train_dir.results))
        tally = one.tally
        landed += tally.kills
        figures = [sum(tally.started.values()), tally.total_kills(), tally.stops, tally.restarts, STEPS // EVERY]
        held = f"{sum(not broken for broken in found.values())}/{len(found)}"
        rows.append([n, one.plan.seed, *figures, *(records[status] for status in STATUSES), held])
    if len(rows) > 1:
        total = [sum(row[i] for row in rows) for i in range(2, len(head) - 1)]
        clean = sum(not any(found.values()) for _, found in rounds)
        rows.append(["all", "", *total, f"all in {clean}/{len(rounds)}"])
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [head, *rows]
    ]
    lines.append("kills landed: " + ", ".join(f"{where} {count}" for where, count in sorted(landed.items())))
    for name in rounds[0][1] if rounds else []:
        broken = [f"round {n}: {found[name]}" for n, (_, found) in enumerate(rounds, 1) if found[name]]
        lines.append(f"{'BROKEN' if broken else 'held  '}  {name}" + "".join(f"\n    {b}" for b in broken))
    return "\n".join(lines)
