"""train.py: optimizer steps only.

Reads the options, builds the task, resumes from the newest checkpoint in the train_dir, then trains,
writing checkpoints and TensorBoard events for eval.py to pick up. It never stops to evaluate.

    python train.py --config configs/digits.yaml --train-dir runs/digits
    torchrun --nproc-per-node 4 train.py --config configs/digits.yaml --train-dir runs/digits

Under torchrun every rank trains (DDP, or FSDP with train.strategy=fsdp); only rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Read once, when torch loads OpenMP: its threads then sleep while they wait, instead of spinning on a core
# that another process needs (shared/runtime/threads.py says what spinning cost beside an evaluator).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from shared import config as cfg
from shared.checkpoints.format import load_for_resume
from shared.checkpoints.retention import RetentionPolicy
from shared.checkpoints.store import list_checkpoints, remove_stale_temps
from shared.errors import CheckpointError, UsageError
from shared.loggers import dashboards
from shared.loggers.backends import check_backends, mark_run, open_run, running
from shared.loggers.base import Logger
from shared.protocol.files import exclusive_lock, refuse_linked_folders, write_atomic
from shared.protocol.finished import mark_finished, retract_finished
from shared.protocol.layout import DEFAULT_SUITE, TrainDir
from shared.protocol.presence import FolderGuard
from shared.runtime import cli, devices, health, seeding, threads
from shared.runtime.devices import place
from shared.runtime.signals import StopRequest
from shared.tasks import Task, splits
from shared.tasks.base import check_model_fits
from shared.tasks.loading import build_model, build_task, load_config
from shared.training import distributed, save_policy
from shared.training.agreement import Agreement
from shared.training.checkpoint_writer import CheckpointWriter
from shared.training.checkpointer import Checkpointer
from shared.training.data import DataPosition, ResumableBatches
from shared.training.distributed import Distributed
from shared.training.eval_wait import EvaluatorWait
from shared.training.feedback import Feedback
from shared.training.ledger_reader import LedgerReader
from shared.training.nonfinite import NonFiniteGuard
from shared.training.optim import TrainState, build_optimizer, build_schedule, parameter_counts
from shared.training.progress import Progress, TrainLog
from shared.training.retire import Retirer

log = logging.getLogger("train")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    cli.add_common_options(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def read_config(args: argparse.Namespace, train_dir: TrainDir) -> cfg.Config:
    """--config (or, when resuming, the saved config.yaml) with --set laid over it.

    A train_dir keeps its task, seed, model and data for life; other changes (more steps, say) are logged.
    """
    resuming = train_dir.config.exists()
    if not args.config and not resuming:
        raise UsageError(f"{train_dir.root} has no config.yaml to resume from; pass --config configs/digits.yaml")
    config = load_config(args.config or train_dir.config, args.overrides, follow_links=bool(args.config))
    if resuming:
        saved = load_config(train_dir.config, follow_links=False)
        changed = cfg.check_same_identity(saved, config, "the config")
        for key, (old, new) in changed.items():
            log.info("resuming with %s changed: %r -> %r", key, old, new)
    return config


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the micro-batches, still on the device
    grad_norm: torch.Tensor
    lr: float
    examples: int
    tokens: int | torch.Tensor | None  # for tasks that count tokens (Task.tokens)


def train_step(
    state: TrainState,
    batches: Iterator,
    task: Task,
    device: torch.device,
    options: cfg.TrainConfig,
    guard: NonFiniteGuard,
) -> StepResult:
    """One optimizer step over `grad_accum_steps` micro-batches, with mixed precision and clipping."""
    state.optimizer.zero_grad(set_to_none=True)
    loss_sum, examples, tokens = torch.zeros((), device=device), 0, None
    for micro in range(1, options.grad_accum_steps + 1):
        inputs, targets = task.split(devices.to_device(next(batches), device, task.channels_last))
        with distributed.gradient_sync(state.forward, micro == options.grad_accum_steps):
            with devices.autocast(device, options.precision):
                loss = task.loss(task.forward(state.forward, inputs), targets)
            state.scaler.scale(loss / options.grad_accum_steps).backward()
        loss_sum += loss.detach().float()
        examples += task.examples(inputs, targets)
        counted = task.tokens(inputs, targets)
        tokens = None if counted is None else (tokens or 0) + counted
    state.scaler.unscale_(state.optimizer)
    max_norm = options.grad_clip_norm or math.inf  # the norm is logged even when clipping is off
    grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
    lr = state.optimizer.param_groups[0]["lr"]
    result = StepResult(loss_sum / options.grad_accum_steps, grad_norm, lr, examples, tokens)
    if not guard.skips(state.step + 1, result.loss, grad_norm):  # train.nan_policy=skip_step
        state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return result


def train(
    config: cfg.Config, task: Task, state: TrainState, train_dir: TrainDir, device: torch.device, folders: FolderGuard
) -> None:
    options, group, feedback = config.train, state.group, state.feedback
    batches = training_batches(config, task, state, device)
    stop, stopping = StopRequest(), False
    agreement = Agreement(group, device, config.log.every_steps)  # what one rank decides alone, agreed by all
    # The evaluator's results, for retention (which ranks them under checkpoint.keep_best), feedback and eval_lag.
    ledger = LedgerReader(train_dir, group, keep_results=config.checkpoint.keep_best > 0)
    heard = feedback_ledger(config, train_dir, group, ledger)
    guard = NonFiniteGuard(options.nan_policy, device, not state.scaler.is_enabled(), group, state.step)
    progress = Progress(state.step, options.steps, shown=group.is_main)
    feedback.begin()
    with (
        open_run(config, train_dir, train_dir.train_run, state.step + 1, enabled=group.is_main) as logger,
        running(config, train_dir, enabled=group.is_main),
    ):
        checkpointer = build_checkpointer(config, train_dir, state, ledger, stop, guard, agreement, logger, folders)
        train_log = TrainLog(logger, progress, guard, group, device, config.log.every_steps)
        dashboards.write_train_header(logger, config, state.step)
        write_heartbeat(train_dir, state.step, group)
        while state.step < options.steps and not stopping and not feedback.stopped:
            result = train_step(state, batches, task, device, options, guard)
            state.step += 1
            guard.observe(state.step, result.loss, result.grad_norm)
            train_log.add(result.loss, result.examples, result.tokens)
            progress.advance()
            if train_log.due(state.step):
                folders.check()
                train_log.write(state.step, result.lr, result.grad_norm)
                # What the evaluator recorded since: may cut the LR, or stop.
                follow_evaluator(state.step, ledger, heard, feedback, state.scheduler, logger)
                write_heartbeat(train_dir, state.step, group)
            stopping = agreement.any(state.step, bool(stop))
            if checkpointer.due(state.step):
                folders.check()
                checkpointer.save(state.step, state.state_dict())
        checkpointer.finish(state.step, state.state_dict)
    progress.close()
    if group.is_main:
        folders.check()
        finished = state.step >= options.steps or feedback.stopped
        finish(train_dir, state.step, finished, feedback)
        if not finished or ledger.newest is None:  # else eval.py ends it, once every checkpoint is evaluated
            mark_run(config, train_dir, "FINISHED" if finished else "KILLED")


def feedback_ledger(config: cfg.Config, train_dir: TrainDir, group: Distributed, ledger: LedgerReader) -> LedgerReader:
    """The ledger the feedback policies act on: train.feedback_suite's (the default suite's is `ledger` itself)."""
    suite = config.train.feedback_suite
    return ledger if suite == DEFAULT_SUITE else LedgerReader(train_dir.for_suite(suite), group)


def follow_evaluator(
    step: int,
    ledger: LedgerReader,
    heard: LedgerReader,
    feedback: Feedback,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    logger: Logger,
) -> None:
    """At a log step: what the default suite recorded since the last one, as `eval_lag`, and what the feedback
    suite (`heard`: train.feedback_suite's ledger, or the same) recorded, for the feedback policies."""
    ledger.poll()
    if (lag := ledger.lag(step)) is not None:
        logger.scalar("eval_lag", lag, step)
    if heard is not ledger:
        ledger.take()  # the default suite's results feed nothing else here
        heard.poll()
    feedback.at_log_step(step, heard.take(), scheduler, logger)
    feedback.expect_evaluator(heard.newest)


def finish(train_dir: TrainDir, step: int, finished: bool, feedback: Feedback) -> None:
    """A finished run says so in finished.json (eval.py then knows no checkpoint will come); a stopped one not."""
    if finished:
        mark_finished(train_dir, step, **feedback.finished_fields())
        log.info("training finished at step %d", step)
    else:
        log.info("stopped at step %d; run the same command to resume", step)


def build_checkpointer(
    config: cfg.Config,
    train_dir: TrainDir,
    state: TrainState,
    ledger: LedgerReader,
    stop: StopRequest,
    guard: NonFiniteGuard,
    agreement: Agreement,
    logger: Logger,
    folders: FolderGuard,
) -> Checkpointer:
    """Saves as checkpoint.* says, each after the NaN check and a flush of the train run, committed only while
    the train_dir is still this run's, retention after each, and a wait for a lagging evaluator
    (train.max_eval_lag)."""
    shards = (state.model, state.optimizer) if state.sharded else None
    writer = CheckpointWriter(
        train_dir, config.checkpoint, state.group, shards, newest=state.step, check_folders=folders.check
    )
    policy = RetentionPolicy.from_options(config.checkpoint, config.eval.best_metric, config.eval.best_higher_is_better)
    lag = config.train.max_eval_lag
    wait = None if lag is None else EvaluatorWait(train_dir, ledger, lag, stop, state.group, folders.check)
    when = save_policy.from_options(config.checkpoint, agreement)
    return Checkpointer(
        when, writer, Retirer(train_dir, policy, ledger, config), guard,
        last_step=config.train.steps, before_save=(logger.flush, state.feedback.saving), wait=wait,
    )  # fmt: skip


def training_batches(config: cfg.Config, task: Task, state: TrainState, device: torch.device) -> Iterator:
    """This rank's share of the training data, in batches, from where the resumed state left off; two
    examples go through the model first, so outputs the task cannot use stop the run before any step."""
    data = place(splits.training_data(task), device, config.data.on_device)
    resumable = ResumableBatches(
        data,
        config.data.batch_size,
        config.seed,
        state.position,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        rank=state.group.rank,
        world_size=state.group.world_size,
        collate_fn=task.collate,
    )  # refuses a stream, which check_model_fits could not take two examples of either
    check_model_fits(task, state.model, data, device)
    return iter(resumable)


def write_heartbeat(train_dir: TrainDir, step: int, group: Distributed) -> None:
    if group.is_main:
        health.write_heartbeat(train_dir.heartbeat, step)


def resume(state: TrainState, train_dir: TrainDir) -> None:
    """Continue from the newest checkpoint, if any, after clearing temp files a crash left behind.

    Under torchrun rank 0 chooses the checkpoint, so every rank resumes from the same one.
    """
    newest = None
    if state.group.is_main:
        for temp in remove_stale_temps(train_dir.checkpoints):
            log.info("removed %s, left by an interrupted save", temp.name)
        found = list_checkpoints(train_dir.checkpoints)
        newest = found[-1].path if found else None
    newest = state.group.broadcast(newest)
    if newest is None:
        return
    try:
        state.load_state_dict(load_for_resume(newest, state.model, state.optimizer, state.sharded))
    except (CheckpointError, KeyError) as err:
        raise UsageError(
            f"cannot resume from {newest}: {err}; move it out of the checkpoints folder to resume from the one before"
        ) from None
    log.info("resumed from %s (epoch %d)", newest.name, state.position.epoch)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    took_threads = threads.apply(threads.choose("train", args.threads))
    train_dir = TrainDir(Path(args.train_dir))
    check_dot_dots(train_dir.root)
    if train_dir.root.exists() and not train_dir.root.is_dir():
        raise UsageError(f"--train-dir {train_dir.root} is a file, not a folder; choose another path")
    refuse_linked_folders(train_dir.checkpoints, train_dir.train_run)
    with distributed.joined(args.device) as (group, device_name):
        # Rank 0 writes, so rank 0 checks that its folders stay the ones it started with (a train_dir there
        # now: the one it reads config.yaml and checkpoints from).
        written = (train_dir.root, train_dir.checkpoints, train_dir.train_run) if group.is_main else ()
        folders = FolderGuard("train.py", *written)
        # Whatever may refuse the run comes before its first write, so a refused run leaves nothing behind.
        config = read_config(args, train_dir)
        check_backends(config)
        device = devices.resolve(device_name)
        seeding.seed_everything(config.seed)
        task = build_task(config)

        devices.use_fast_math(device, autotune=True)
        model = build_model(task, device)
        if task.channels_last and device.type == "cuda" and config.train.strategy != "fsdp":  # FSDP: contiguous only
            model = model.to(memory_format=torch.channels_last)
        forward = distributed.wrap(model, config.train.strategy, group, device)  # before the optimizer: FSDP
        total, trainable = parameter_counts(model)
        log.info("model: %s parameters (%s trainable), training on %s", f"{total:,}", f"{trainable:,}", device)
        log.info(took_threads)
        if group.rank:  # the same initial weights on every rank, but each rank its own dropout masks
            seeding.seed_everything(config.seed + group.rank)
        optimizer = build_optimizer(model, config.train, fused=device.type == "cuda")
        precision = devices.precision_for(device, config.train.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        feedback = Feedback(config, train_dir, group)
        schedule = build_schedule(optimizer, config.train, feedback.lr_factor)
        sharded = config.train.strategy == "fsdp"
        state = TrainState(model, optimizer, schedule, scaler, DataPosition(), feedback, group=group, sharded=sharded)
        state.forward = torch.compile(forward) if config.train.compile else forward

        train_dir.root.mkdir(parents=True, exist_ok=True)
        with owning(train_dir, group, folders):
            resume(state, train_dir)
            group.barrier()  # every rank read config.yaml and its checkpoint before rank 0 rewrites anything
            if group.is_main:
                saved = cfg.to_yaml(config).encode()  # first: nothing slow between the check and the write
                folders.check()
                if (marker := retract_finished(train_dir)) is not None:  # no new checkpoint beside it, ever
                    log.info(
                        "removed finished.json (step %s): training goes on to step %d", marker.step, config.train.steps
                    )
                folders.check()
                write_atomic(train_dir.config, saved)
            train(config, task, state, train_dir, device, folders)
    return 0


def check_dot_dots(path: Path) -> None:
    """UsageError for a `..` after a folder that does not exist (`missing/../td`): creating the train_dir
    would first create `missing`, a stray folder, to step back out of it."""
    for index, part in enumerate(path.parts):
        if part == ".." and not (before := Path(*path.parts[:index])).is_dir():
            raise UsageError(
                f"--train-dir {path}: {before} does not exist, so {before}/.. means nothing yet; "
                "give the path without it"
            )


@contextlib.contextmanager
def owning(train_dir: TrainDir, group: Distributed, folders: FolderGuard) -> Iterator[None]:
    """The train_dir's lock, held by rank 0 for all ranks: one training writes a train_dir. From here on
    `folders` also checks that the lock file is still the one held: a train_dir removed and made anew under
    this run (where another train.py may hold a lock of its own) is not this run's any more."""
    if not group.is_main:
        yield
        return
    with exclusive_lock(train_dir.lock, f"another train.py is already training in {train_dir.root}") as fd:
        log.info("training in %s (pid %d holds %s)", train_dir.root, os.getpid(), train_dir.lock.name)
        folders.hold_lock(train_dir.lock, fd)  # checked before anything is written or removed
        try:
            yield
        except OSError:
            folders.check()  # a folder removed or made anew under the run is why a write failed: say that
            raise


if __name__ == "__main__":
    cli.run("train.py", main)
