"""Evaluation feedback: eval.py's results steer train.py (LR cut on a plateau, early stop, waiting).

eval.py is another process, so train.py follows its ledger (`eval/results.jsonl`) at log steps only, with a
stat and a read of the appended bytes, never blocking a step, and acts on each new evaluation at the
first log step that sees it. That step depends on timing; so every evaluation acted on is a *decision*,
appended to `train/decisions.jsonl`, and the policies' state goes into each checkpoint. A resumed run
replays the decisions logged after its checkpoint at their recorded steps before it reads anything new:
it takes the same decisions at the same steps. docs/protocol.md ("Feedback") has the rules.

Under torchrun only rank 0 reads the ledger and decisions.jsonl and writes decisions; it sends what it
read to the other ranks at the same log steps (a broadcast), so every rank takes the same decisions at
the same steps. Waiting for the evaluator (train.max_eval_lag), rank 0 polls and the others follow it
poll by poll.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from shared import config as cfg
from shared.checkpoints.saver import PeriodicSaver
from shared.checkpoints.store import list_checkpoints
from shared.protocol.files import append_line, write_atomic
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import LedgerTail, read_records, record_metric
from shared.runtime import health
from shared.runtime.signals import StopRequest
from shared.training.distributed import Distributed

log = logging.getLogger(__name__)

# What a replayed decision must repeat to count as the same decision (wall_time and reason text aside).
DECIDED = ("index", "eval_step", "applied_step", "values", "action", "old_lr", "new_lr", "lr_multiplier")
WAIT_POLL_SECS = 0.2  # how often train.max_eval_lag re-reads the ledger while it waits


@dataclass
class Tracker:
    """Keras-style progress of one metric: the best value so far and evaluations since it improved."""

    sign: float  # +1 when higher is better, -1 when lower is
    min_delta: float
    best: float = -math.inf  # sign x the best value
    wait: int = 0

    def improved(self, value: float) -> bool:
        if self.sign * value > self.best + self.min_delta:
            self.best, self.wait = self.sign * value, 0
            return True
        self.wait += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


def tracker(options: cfg.PlateauConfig | cfg.EarlyStopConfig) -> Tracker:
    return Tracker(1.0 if cfg.resolved_mode(options.metric, options.mode) == "max" else -1.0, options.min_delta)


def stalled(name: str, options: cfg.PlateauConfig | cfg.EarlyStopConfig) -> str:
    return f"{name}: {options.split} {options.metric} did not improve for {options.patience} evaluations"


class Plateau:
    """train.on_plateau, as Keras' ReduceLROnPlateau: after `patience` evaluations without improvement,
    the LR multiplier is cut by `factor` (not below min_lr / train.lr), then `cooldown` evaluations pass
    uncounted."""

    def __init__(self, options: cfg.PlateauConfig, base_lr: float) -> None:
        self.options, self.tracker, self.cooldown = options, tracker(options), 0
        self.floor = options.min_lr / base_lr

    def decide(self, value: float, multiplier: float) -> tuple[float, str]:
        """The new multiplier, and why it changed ("" when it did not)."""
        if self.cooldown:
            self.cooldown -= 1
            self.tracker.wait = 0
        improved = self.tracker.improved(value)
        if self.cooldown:
            self.tracker.wait = 0
        if improved or self.tracker.wait < self.options.patience or multiplier <= self.floor:
            return multiplier, ""
        self.cooldown, self.tracker.wait = self.options.cooldown, 0
        return max(multiplier * self.options.factor, self.floor), stalled("on_plateau", self.options)

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "cooldown": self.cooldown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.cooldown = state["cooldown"]


class EarlyStop:
    """train.early_stop, as Keras' EarlyStopping: stop after `patience` evaluations without improvement."""

    def __init__(self, options: cfg.EarlyStopConfig) -> None:
        self.options, self.tracker = options, tracker(options)

    def decide(self, value: float) -> str:
        """Why to stop now, or "" to go on."""
        if self.tracker.improved(value) or self.tracker.wait < self.options.patience:
            return ""
        return stalled("early_stop", self.options)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


def refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Apply a changed multiplier from the next step on, rather than one step later at scheduler.step()."""
    groups = zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    for group, base, factor in groups:
        group["lr"] = base * factor(scheduler.last_epoch)


def _line(decision: dict[str, Any]) -> str:
    return json.dumps(decision, sort_keys=True)


class Feedback:
    """train.py's side of the channel: the LR multiplier, the policies, their decisions and their replay."""

    def __init__(self, config: cfg.Config, train_dir: TrainDir, group: Distributed | None = None) -> None:
        options = config.train
        self.group = group or Distributed.alone()
        self.plateau = Plateau(options.on_plateau, options.lr) if options.on_plateau.patience else None
        self.early_stop = EarlyStop(options.early_stop) if options.early_stop.patience else None
        self.policies = {name: p for name, p in (("on_plateau", self.plateau), ("early_stop", self.early_stop)) if p}
        self.max_eval_lag = options.max_eval_lag
        self.train_dir = train_dir
        self.tail = LedgerTail(train_dir.results)
        self.multiplier = 1.0  # on the schedule's LR; only on_plateau changes it
        self.last_eval_step = -1  # the newest evaluation acted on; an older one arrives too late to count
        self.stop_decision: dict[str, Any] | None = None
        self.decisions: list[dict[str, Any]] = []  # applied so far, as decisions.jsonl holds them
        self._in_checkpoint = 0  # how many decisions the loaded checkpoint had applied
        self._replay: list[dict[str, Any]] = []  # logged after that checkpoint: applied again at their steps
        self._ready: list[dict[str, Any]] = []  # ok records read from the ledger, not acted on yet

    def lr_factor(self) -> float:
        return self.multiplier

    @property
    def stopped(self) -> bool:
        return self.stop_decision is not None and self.early_stop is not None

    def finished_fields(self) -> dict[str, Any]:
        """What finished.json says beyond the step: why training ended, when an evaluation ended it."""
        return {"reason": "early_stop", "decision": self.stop_decision} if self.stopped else {"reason": "completed"}

    def state_dict(self) -> dict[str, Any]:
        return {
            "multiplier": self.multiplier,
            "last_eval_step": self.last_eval_step,
            "decisions": len(self.decisions),
            "stop_decision": self.stop_decision,
            "policies": {name: policy.state_dict() for name, policy in self.policies.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier, self.last_eval_step = state["multiplier"], state["last_eval_step"]
        self._in_checkpoint, self.stop_decision = state["decisions"], state["stop_decision"]
        for name, policy in self.policies.items():
            if name in state["policies"]:  # a policy switched on at this resume starts fresh
                policy.load_state_dict(state["policies"][name])

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
        if self.group.is_main and path.exists() and path.read_text() != "".join(_line(d) + "\n" for d in logged):
            self._rewrite(logged)

    def at_log_step(self, step: int, scheduler: torch.optim.lr_scheduler.LambdaLR, writer: SummaryWriter) -> None:
        """Act on what is due at this log step: decisions to replay first, then new evaluations."""
        if not self.policies or self.stopped:
            return
        self._read_ledger()
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
            self._announce(decision, writer)
        if self._replay:
            return
        while self._ready and self._ready[0]["step"] <= step and not self.stopped:
            record = self._ready.pop(0)
            if record["step"] <= self.last_eval_step:  # acted on already, in a replay
                continue
            values = {name: self._value(record, policy) for name, policy in self.policies.items()}
            decision = self._decide(record["step"], values, step, scheduler)
            if self.group.is_main:
                append_line(self.train_dir.decisions, _line(decision))
            self._announce(decision, writer)

    def keep_up(self, step: int, saver: PeriodicSaver, stop: StopRequest) -> None:
        """train.max_eval_lag: after a save, wait while more checkpoints than that await evaluation.

        Only checkpoints on disk count, so one deleted by retention (checkpoint.max_unevaluated) can never
        be waited for; without a ledger there is no evaluator to wait for.
        """
        if self.max_eval_lag is None:
            return
        saver.wait()  # committed, so the evaluator can reach it
        started, waited = time.monotonic(), False
        while True:
            # Rank 0 reads and decides at each poll, the others follow poll by poll: no collective waits long.
            records, behind = self.group.broadcast(self._poll_lag(stop) if self.group.is_main else None)
            self._keep(records)
            if not behind:
                break
            if not waited:
                log.info("waiting for eval.py: %s not evaluated yet (train.max_eval_lag=%d)", behind, self.max_eval_lag)
                waited = True
            if self.group.is_main:
                health.write_heartbeat(self.train_dir.heartbeat, step)  # waiting on purpose is not being stuck
            time.sleep(WAIT_POLL_SECS)
        if waited:
            log.info("waited %.1fs for eval.py", time.monotonic() - started)
            saver.last_saved_time = time.monotonic()  # no step was taken meanwhile: not a reason for a save by time

    def _poll_lag(self, stop: StopRequest) -> tuple[list[dict[str, Any]] | None, list[int]]:
        """Rank 0: what the ledger gained, and the checkpoints to wait for (none on a stop request, or
        without a ledger, or when no more than train.max_eval_lag await evaluation)."""
        records = self.tail.poll()
        if stop or records is None:
            return records, []
        behind = [c.step for c in list_checkpoints(self.train_dir.checkpoints) if c.step > self.tail.newest]
        return records, behind if len(behind) > self.max_eval_lag else []

    def _read_ledger(self) -> None:
        """Rank 0 reads what the ledger gained; every rank keeps the same records."""
        self._keep(self.group.broadcast(self.tail.poll() if self.group.is_main else None))

    def _keep(self, records: list[dict[str, Any]] | None) -> None:
        """Keep the new ok records, in step order (failed and skipped ones never feed a policy)."""
        for record in (records or []) if self.policies else []:
            if record["step"] <= self.last_eval_step:
                continue
            if record.get("status") == "ok":
                self._ready.append(record)
            else:
                log.info("evaluation of step %d is %s; the policies ignore it", record["step"], record.get("status"))
        self._ready.sort(key=lambda r: r["step"])

    def _value(self, record: dict[str, Any], policy: Plateau | EarlyStop) -> float | None:
        value = record_metric(record, policy.options.split, policy.options.metric)
        if value is None:
            log.warning(
                "evaluation of step %d has no %s %s; the policy on it skips this evaluation",
                record["step"],
                policy.options.split,
                policy.options.metric,
            )
        return value

    def _decide(
        self, eval_step: int, values: dict[str, float | None], step: int, scheduler: torch.optim.lr_scheduler.LambdaLR
    ) -> dict[str, Any]:
        """Feed one evaluation to the policies at train step `step`, apply the outcome, and describe it."""
        old_lr, action, reasons = scheduler.optimizer.param_groups[0]["lr"], "none", []
        if self.plateau and values.get("on_plateau") is not None:
            multiplier, why = self.plateau.decide(values["on_plateau"], self.multiplier)
            if multiplier != self.multiplier:
                self.multiplier, action = multiplier, "reduce_lr"
                refresh_lr(scheduler)
                reasons.append(why)
        if self.early_stop and values.get("early_stop") is not None:
            why = self.early_stop.decide(values["early_stop"])
            if why:
                action = "early_stop"
                reasons.append(why)
        self.last_eval_step = max(self.last_eval_step, eval_step)
        decision = {
            "index": len(self.decisions),
            "eval_step": eval_step,
            "applied_step": step,
            "values": values,
            "action": action,
            "old_lr": old_lr,
            "new_lr": scheduler.optimizer.param_groups[0]["lr"],
            "lr_multiplier": self.multiplier,
            "reason": "; ".join(reasons),
            "wall_time": time.time(),
        }
        self.decisions.append(decision)
        if action == "early_stop":
            self.stop_decision = decision
        return decision

    def _announce(self, decision: dict[str, Any], writer: SummaryWriter) -> None:
        """The log line and the TensorBoard text (train run, at the step it was applied)."""
        what = {"none": "no change", "reduce_lr": "LR cut", "early_stop": "stop"}[decision["action"]]
        text = (
            f"step {decision['applied_step']}: evaluation of step {decision['eval_step']} "
            f"{json.dumps(decision['values'])}: {what}; lr {decision['old_lr']:.3g} -> {decision['new_lr']:.3g}"
        )
        if decision["reason"]:
            text += f" ({decision['reason']})"
        (log.info if decision["action"] == "none" else log.warning)("decision %d: %s", decision["index"], text)
        writer.add_text("decisions", text, decision["applied_step"])

    def _rewrite(self, decisions: list[dict[str, Any]]) -> None:
        write_atomic(self.train_dir.decisions, "".join(_line(d) + "\n" for d in decisions).encode())
