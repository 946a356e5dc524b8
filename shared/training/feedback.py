"""Evaluation feedback: the plumbing that lets eval.py's results steer train.py (LR cut on a plateau,
early stop) through the pure policies of shared.training.policies.

eval.py is another process, so train.py reads its ledger (`eval/results.jsonl`) at log steps only
(shared.training.ledger_reader) and acts on each new evaluation at the first log step that sees it. That
step depends on timing; so every evaluation acted on is a *decision*, appended to
`train/decisions.jsonl`, and the policies' state goes into each checkpoint. A resumed run replays the
decisions logged after its checkpoint at their recorded steps before it reads anything new: it takes
the same decisions at the same steps. docs/protocol.md ("Feedback") has the rules.

Under torchrun only rank 0 reads the ledger and decisions.jsonl and writes decisions; every rank gets
what it read (a broadcast), so every rank takes the same decisions at the same steps.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch

from shared import config as cfg
from shared.loggers.base import Logger
from shared.protocol import numbers
from shared.protocol.files import append_line, read_file, write_atomic
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.protocol.results import EvalResult
from shared.training.distributed import Distributed
from shared.training.policies import Policies

log = logging.getLogger(__name__)

# Checkpoints saved with no evaluation recorded before train.py says the policies may have nothing to act on:
# time enough for an evaluator started beside train.py to join and record its first evaluation.
WARN_AFTER_CHECKPOINTS = 3

# What a replayed decision must repeat to count as the same decision (wall_time and reason text aside).
DECIDED = ("index", "eval_step", "applied_step", "values", "action", "old_lr", "new_lr", "lr_multiplier")


def refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Apply a changed multiplier from the next step on, rather than one step later at scheduler.step()."""
    groups = zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    for group, base, factor in groups:
        group["lr"] = base * factor(scheduler.last_epoch)


def _line(decision: dict[str, Any]) -> str:
    return numbers.dumps(decision, sort_keys=True)


def _lines(decisions: list[dict[str, Any]]) -> bytes:
    """decisions.jsonl holding exactly `decisions`."""
    return "".join(_line(d) + "\n" for d in decisions).encode()


class Feedback:
    """train.py's side of the channel: the LR multiplier, the policies, their decisions and their replay."""

    def __init__(self, config: cfg.Config, train_dir: TrainDir, group: Distributed | None = None) -> None:
        self.group = group or Distributed.alone()
        self.policies = Policies(config.train)
        self.train_dir = train_dir
        self.multiplier = 1.0  # on the schedule's LR; only on_plateau changes it
        self.last_eval_step = -1  # the newest evaluation acted on; an older one arrives too late to count
        self.stop_decision: dict[str, Any] | None = None
        self.decisions: list[dict[str, Any]] = []  # applied so far, as decisions.jsonl holds them
        self._in_checkpoint = 0  # how many decisions the loaded checkpoint had applied
        self._replay: list[dict[str, Any]] = []  # logged after that checkpoint: applied again at their steps
        self._ready: list[EvalResult] = []  # ok results read from the ledger, not acted on yet
        self._expected_evaluator = False  # said already that no evaluation has come
        self._saves = 0  # this process's saves so far

    def lr_factor(self) -> float:
        return self.multiplier

    @property
    def stopped(self) -> bool:
        return self.stop_decision is not None and self.policies.early_stop is not None

    def finished_fields(self) -> dict[str, Any]:
        """What finished.json says beyond the step: why training ended, when an evaluation ended it."""
        return {"reason": "early_stop", "decision": self.stop_decision} if self.stopped else {"reason": "completed"}

    def state_dict(self) -> dict[str, Any]:
        return {
            "multiplier": self.multiplier,
            "last_eval_step": self.last_eval_step,
            "decisions": len(self.decisions),
            "stop_decision": self.stop_decision,
            "policies": self.policies.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier, self.last_eval_step = state["multiplier"], state["last_eval_step"]
        self._in_checkpoint, self.stop_decision = state["decisions"], state["stop_decision"]
        self.policies.load_state_dict(state["policies"])

    def begin(self) -> None:
        """Split decisions.jsonl into what the checkpoint applied and what to replay; drop a torn last line."""
        path = self.train_dir.decisions
        logged = self.group.broadcast(read_records(path) if self.group.is_main else None)
        self.decisions, self._replay = logged[: self._in_checkpoint], logged[self._in_checkpoint :]
        if len(self.decisions) < self._in_checkpoint:
            log.warning("%s holds %d decisions, fewer than the checkpoint's %d", path, len(logged), self._in_checkpoint)
        if self._replay:
            steps = [d["applied_step"] for d in self._replay]
            log.info("replaying %d decision(s) logged after the checkpoint, at steps %s", len(steps), steps)
        if self.group.is_main and path.exists() and read_file(path) != _lines(logged):
            self._rewrite(logged)

    def at_log_step(
        self, step: int, results: list[EvalResult], scheduler: torch.optim.lr_scheduler.LambdaLR, logger: Logger
    ) -> None:
        """Act on what is due at this log step: decisions to replay first, then new evaluations (`results`,
        what the ledger gained since the last log step)."""
        if not self.policies.enabled or self.stopped:
            return
        self._keep(results)
        while self._replay and self._replay[0]["applied_step"] <= step and not self.stopped:
            logged = self._replay.pop(0)
            decision = self._decide(logged["eval_step"], logged["values"], step, scheduler)
            if [decision.get(k) for k in DECIDED] != [logged.get(k) for k in DECIDED]:
                log.warning(
                    "decision %d differs from the one logged before the restart (a changed config?); "
                    "decisions.jsonl now ends with it, and newer evaluations come from the ledger again",
                    decision["index"],
                )
                self._replay.clear()
                self._rewrite(self.decisions)
            self._announce(decision, logger)
        if self._replay:
            return
        while self._ready and self._ready[0].step <= step and not self.stopped:
            result = self._ready.pop(0)
            if result.step <= self.last_eval_step:  # acted on already, in a replay
                continue
            decision = self._decide(result.step, self.policies.values(result), step, scheduler)
            if self.group.is_main:
                append_line(self.train_dir.decisions, _line(decision))
            self._announce(decision, logger)

    def saving(self) -> None:
        """A checkpoint is being saved (train.py's Checkpointer says so before each save)."""
        self._saves += 1

    def expect_evaluator(self, newest_evaluated: int | None) -> None:
        """Say once, when a policy is on, that this process saved checkpoints and no evaluation was recorded
        (`newest_evaluated`: -1, or None when no evaluator keeps a ledger): the policies act on eval.py's
        results only, and train.py never evaluates."""
        saves = self._saves
        if self._expected_evaluator or not self.policies.enabled or saves < WARN_AFTER_CHECKPOINTS:
            return
        if newest_evaluated is not None and newest_evaluated >= 0:
            return
        self._expected_evaluator = True
        if self.group.is_main:
            log.warning(
                "%s set, but %s after %d checkpoints: plateau LR cuts and early stopping act on eval.py's "
                "evaluations only; run eval.py --train-dir %s beside train.py, or start both with launch.py",
                " and ".join(f"train.{name}" for name in self.policies.enabled),
                "no eval.py has joined" if newest_evaluated is None else "eval.py has recorded no evaluation",
                saves,
                self.train_dir.root,
            )

    def _keep(self, results: list[EvalResult]) -> None:
        """Keep the new ok results, in step order (failed and skipped ones never feed a policy)."""
        for result in results:
            if result.step <= self.last_eval_step:
                continue
            if result.status == "ok":
                self._ready.append(result)
            else:
                log.info("evaluation of step %d is %s; the policies ignore it", result.step, result.status)
        self._ready.sort(key=lambda r: r.step)

    def _decide(
        self, eval_step: int, values: dict[str, float | None], step: int, scheduler: torch.optim.lr_scheduler.LambdaLR
    ) -> dict[str, Any]:
        """Feed one evaluation to the policies at train step `step`, apply the verdict, and describe it."""
        old_lr = scheduler.optimizer.param_groups[0]["lr"]
        verdict = self.policies.decide(values, self.multiplier)
        if verdict.multiplier != self.multiplier:
            self.multiplier = verdict.multiplier
            refresh_lr(scheduler)
        self.last_eval_step = max(self.last_eval_step, eval_step)
        decision = {
            "index": len(self.decisions),
            "eval_step": eval_step,
            "applied_step": step,
            "values": values,
            "action": verdict.action,
            "old_lr": old_lr,
            "new_lr": scheduler.optimizer.param_groups[0]["lr"],
            "lr_multiplier": self.multiplier,
            "reason": verdict.reason,
            "wall_time": time.time(),
        }
        self.decisions.append(decision)
        if verdict.action == "early_stop":
            self.stop_decision = decision
        return decision

    def _announce(self, decision: dict[str, Any], logger: Logger) -> None:
        """The log line and the TensorBoard text (train run, at the step it was applied)."""
        what = {"none": "no change", "reduce_lr": "LR cut", "early_stop": "stop"}[decision["action"]]
        text = (
            f"step {decision['applied_step']}: evaluation of step {decision['eval_step']} "
            f"{json.dumps(decision['values'])}: {what}; lr {decision['old_lr']:.3g} -> {decision['new_lr']:.3g}"
        )
        if decision["reason"]:
            text += f" ({decision['reason']})"
        (log.info if decision["action"] == "none" else log.warning)("decision %d: %s", decision["index"], text)
        logger.text("decisions", text, decision["applied_step"])

    def _rewrite(self, decisions: list[dict[str, Any]]) -> None:
        write_atomic(self.train_dir.decisions, _lines(decisions))
