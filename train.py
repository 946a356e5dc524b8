"""train.py: optimizer steps only.

Reads the options, builds the task, resumes from the newest checkpoint in the train_dir, then trains,
writing checkpoints and TensorBoard events for eval.py to pick up. It never stops to evaluate.

    python train.py --config configs/digits.yaml --train-dir runs/digits
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from shared import checkpoints, cli, dashboards, devices, health, seeding, splits
from shared import config as cfg
from shared.data import DataPosition, ResumableBatches, place
from shared.errors import RunAborted, UsageError
from shared.files import exclusive_lock, write_atomic
from shared.layout import TrainDir
from shared.progress import Progress
from shared.signals import StopRequest
from shared.summaries import open_writer
from shared.tasks import Task, build_task
from shared.training import NonFiniteGuard, TrainState, build_optimizer, build_schedule, parameter_counts

log = logging.getLogger("train")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    cli.add_common_options(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def read_config(args: argparse.Namespace, train_dir: TrainDir) -> cfg.Config:
    """--config (or, when resuming, the saved config.yaml) with --set laid over it.

    A train_dir keeps its task, model and data for life; other changes (more steps, say) are logged.
    """
    resuming = train_dir.config.exists()
    if not args.config and not resuming:
        raise UsageError(f"{train_dir.root} has no config.yaml to resume from; pass --config configs/digits.yaml")
    config = cfg.load(args.config or train_dir.config, args.overrides)
    if resuming:
        changed = cfg.check_same_identity(cfg.load(train_dir.config), config, "the config")
        for key, (old, new) in changed.items():
            log.info("resuming with %s changed: %r -> %r", key, old, new)
    return config


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the micro-batches, still on the device
    grad_norm: torch.Tensor
    lr: float
    examples: int


def train_step(
    state: TrainState, batches: Iterator, task: Task, device: torch.device, options: cfg.TrainConfig
) -> StepResult:
    """One optimizer step over `grad_accum_steps` micro-batches, with mixed precision and clipping."""
    state.optimizer.zero_grad(set_to_none=True)
    loss_sum, examples = torch.zeros((), device=device), 0
    for _ in range(options.grad_accum_steps):
        inputs, targets = next(batches)
        inputs = devices.to_device(inputs, device, task.channels_last)
        targets = targets.to(device, non_blocking=True)
        with devices.autocast(device, options.precision):
            loss = task.loss(state.forward(inputs), targets)
        state.scaler.scale(loss / options.grad_accum_steps).backward()
        loss_sum += loss.detach().float()
        examples += len(targets)
    state.scaler.unscale_(state.optimizer)
    max_norm = options.grad_clip_norm or math.inf  # the norm is logged even when clipping is off
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
    result = StepResult(loss_sum / options.grad_accum_steps, grad_norm, state.optimizer.param_groups[0]["lr"], examples)
    if options.nan_policy == "skip_step" and not bool(torch.isfinite(result.loss) & torch.isfinite(grad_norm)):
        log.warning("step %d: loss or gradient norm is NaN/Inf; skipped its update (train.nan_policy)", state.step + 1)
    else:
        state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return result


def train(config: cfg.Config, task: Task, state: TrainState, train_dir: TrainDir, device: torch.device) -> None:
    options = config.train
    batches = iter(
        ResumableBatches(
            place(splits.training_data(task), device, config.data.on_device),
            config.data.batch_size,
            config.seed,
            state.position,
            num_workers=config.data.num_workers,
            pin_memory=device.type == "cuda",
        )
    )
    saver = checkpoints.PeriodicSaver(train_dir, config.checkpoint, last_saved_step=state.step)
    guard = NonFiniteGuard(device, check_grad_norm=not state.scaler.is_enabled())
    stop = StopRequest()
    progress = Progress(state.step, options.steps)
    interval_loss, interval_examples, interval_start = torch.zeros((), device=device), 0, time.perf_counter()

    with open_writer(train_dir.train_run, purge_step=state.step + 1) as writer:
        dashboards.write_train_header(writer, config, state.step)
        eval_lag = dashboards.EvalLag(train_dir.results)
        health.write_heartbeat(train_dir.heartbeat, state.step)
        while state.step < options.steps and not stop:
            result = train_step(state, batches, task, device, options)
            state.step += 1
            if options.nan_policy == "stop":
                guard.observe(state.step, result.loss, result.grad_norm)
            interval_loss += result.loss
            interval_examples += result.examples
            progress.advance()

            if state.step % config.log.every_steps == 0:
                stop_if_not_finite(guard, saver)
                elapsed = time.perf_counter() - interval_start
                scalars = {
                    "loss": interval_loss.item() / config.log.every_steps,  # host syncs at log steps only
                    "learning_rate": result.lr,
                    "grad_norm": result.grad_norm.item(),
                    "examples_per_sec": interval_examples / elapsed,
                }
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, state.step)
                progress.report(state.step, scalars)
                eval_lag.log(writer, state.step)
                health.write_heartbeat(train_dir.heartbeat, state.step)
                interval_loss.zero_()
                interval_examples, interval_start = 0, time.perf_counter()

            if saver.due(state.step):
                stop_if_not_finite(guard, saver)
                writer.flush()  # points up to a checkpoint are on disk before it: a resume never loses them
                saver.save(state.step, state.state_dict())

        stop_if_not_finite(guard, saver)
        if state.step > saver.last_requested_step:
            writer.flush()
            saver.save(state.step, state.state_dict(), final=True)
        saver.close()
    progress.close()
    if state.step >= options.steps:
        record = {"step": state.step, "reason": "completed", "wall_time": time.time()}
        write_atomic(train_dir.finished, (json.dumps(record) + "\n").encode())
        log.info("training finished at step %d", state.step)
    else:
        log.info("stopped at step %d; run the same command to resume", state.step)


def stop_if_not_finite(guard: NonFiniteGuard, saver: checkpoints.PeriodicSaver) -> None:
    """Abort before logging or saving anything computed from NaN/Inf (train.nan_policy=stop)."""
    bad_step = guard.first_bad_step()
    if bad_step is not None:
        raise RunAborted(
            f"the loss or gradient norm became NaN/Inf at step {bad_step}; stopped without saving, so the newest "
            f"checkpoint (step {saver.last_saved_step}) predates it. Lower train.lr, set train.grad_clip_norm, "
            "check the data, or set train.nan_policy=skip_step to skip such steps"
        )


def resume(state: TrainState, train_dir: TrainDir, device: torch.device) -> None:
    """Continue from the newest checkpoint, if any, after clearing temp files a crash left behind."""
    for temp in checkpoints.remove_stale_temps(train_dir.checkpoints):
        log.info("removed %s, left by an interrupted save", temp.name)
    found = checkpoints.list_checkpoints(train_dir.checkpoints)
    if not found:
        return
    try:
        state.load_state_dict(checkpoints.load(found[-1].path, map_location=device))
    except (checkpoints.CheckpointError, KeyError) as err:
        raise UsageError(
            f"cannot resume from {found[-1].path}: {err}; move it out of the checkpoints folder to resume "
            "from the one before"
        ) from None
    log.info("resumed from %s (epoch %d)", found[-1].path.name, state.position.epoch)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    train_dir = TrainDir(Path(args.train_dir))
    if train_dir.root.exists() and not train_dir.root.is_dir():
        raise UsageError(f"--train-dir {train_dir.root} is a file, not a folder; choose another path")
    train_dir.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(train_dir.lock, f"another train.py is already training in {train_dir.root}"):
        config = read_config(args, train_dir)
        device = devices.resolve(args.device)
        seeding.seed_everything(config.seed)
        task = build_task(config)

        devices.use_fast_math(device, autotune=True)
        model = task.build_model().to(device)
        if task.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        total, trainable = parameter_counts(model)
        log.info("model: %s parameters (%s trainable), training on %s", f"{total:,}", f"{trainable:,}", device)
        optimizer = build_optimizer(model, config.train, fused=device.type == "cuda")
        precision = devices.precision_for(device, config.train.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        state = TrainState(model, optimizer, build_schedule(optimizer, config.train), scaler, DataPosition())
        if config.train.compile:
            state.forward = torch.compile(model)
        resume(state, train_dir, device)

        train_dir.finished.unlink(missing_ok=True)
        cfg.save(config, train_dir.config)
        train(config, task, state, train_dir, device)
    return 0


if __name__ == "__main__":
    cli.run("train.py", main)
