"""Training throughput, side by side in one run: the bare loop (the limit) against train.py alone, with
eval.py beside it (on the CPU, on the same GPU), the classic loop that stops to validate, PyTorch
Lightning's Trainer, and train.py under torchrun with one process. Every variant trains the same model
on the same data with the same optimizer for the same number of steps; each is reported as a ratio to
the bare loop.

    python -m bench.throughput                 # the H100 run: configs/synthetic.yaml
    python -m bench.throughput --smoke         # seconds on a CPU, so the script never rots

Steady steps/s are measured between step `--warmup` and the last step (from train.py's own TensorBoard
events for the process variants), so start-up is excluded there; the wall column includes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ROOT, add_results_option, report
from shared import config as cfg
from shared.evaluation.evaluator import Evaluator
from shared.protocol.ledger import read_records
from shared.runtime import devices, seeding
from shared.tasks import Task
from shared.tasks.loading import build_task, load_config
from shared.training.data import DataPosition, ResumableBatches, place
from shared.training.optim import build_optimizer, build_schedule

SMOKE = [
    "model.width=8",
    "model.blocks_per_stage=[1, 1]",
    "data.batch_size=32",
    "data.train_examples=512",
    "data.eval_examples=256",
    "train.warmup_steps=5",
    "eval.batch_size=128",
]


@dataclass
class Result:
    steps_per_sec: float
    wall_secs: float
    note: str = ""


@dataclass
class Setup:
    config_path: str
    config: cfg.Config
    overrides: list[str]
    device: torch.device
    steps: int
    warmup: int
    every: int  # checkpoint / validation cadence, in steps
    eval_threads: int  # CPU threads for eval.py beside the trainer


def training_parts(setup: Setup) -> tuple[Task, torch.nn.Module, torch.optim.Optimizer, Callable, Iterator]:
    """The model, optimizer and data every in-process variant uses, built as train.py builds them."""
    config, device = setup.config, setup.device
    seeding.seed_everything(config.seed)
    devices.use_fast_math(device, autotune=True)
    task = build_task(config)
    model = task.build_model().to(device)
    if task.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.train, fused=device.type == "cuda")
    schedule = build_schedule(optimizer, config.train)
    data = place(task.train_data(), device, config.data.on_device)
    batches = iter(ResumableBatches(data, config.data.batch_size, config.seed, DataPosition()))

    def step() -> None:
        inputs, targets = next(batches)
        inputs = devices.to_device(inputs, device, task.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(device, config.train.precision):
            loss = task.loss(model(inputs), targets.to(device, non_blocking=True))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip_norm or float("inf"))
        optimizer.step()
        schedule.step()

    return task, model, optimizer, step, batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(setup: Setup, step: Callable[[], None], every: Callable[[int], None] | None = None) -> Result:
    """Run `steps` steps, calling `every(step)` at the cadence; steady rate from `warmup` to the end."""
    started = time.perf_counter()
    steady_start = started
    for i in range(1, setup.steps + 1):
        step()
        if every and i % setup.every == 0:
            every(i)
        if i == setup.warmup:
            sync(setup.device)
            steady_start = time.perf_counter()
    sync(setup.device)
    ended = time.perf_counter()
    return Result((setup.steps - setup.warmup) / (ended - steady_start), ended - started)


def bare_loop(setup: Setup) -> Result:
    started = time.perf_counter()
    _, _, _, step, _ = training_parts(setup)
    result = timed_loop(setup, step)
    result.wall_secs = time.perf_counter() - started
    return result


def classic_loop(setup: Setup) -> Result:
    """Train, stop every `every` steps to run the whole validation set in this process, carry on."""
    started = time.perf_counter()
    _, model, _, step, _ = training_parts(setup)
    evaluator = Evaluator.from_config(setup.config, setup.device)
    evaluator.model = model  # validate the model being trained
    validation_secs = []

    def validate(i: int) -> None:
        began = time.perf_counter()
        model.eval()
        evaluator.evaluate(i)
        model.train()
        validation_secs.append(time.perf_counter() - began)

    result = timed_loop(setup, step, validate)
    result.wall_secs = time.perf_counter() - started
    result.note = f"{len(validation_secs)} validations, {sum(validation_secs):.1f}s in all"
    return result


def lightning_loop(setup: Setup) -> Result:
    """PyTorch Lightning's Trainer: same model, data, optimizer, val_check_interval and ModelCheckpoint."""
    try:
        import lightning as L
    except ImportError:
        return Result(float("nan"), float("nan"), "lightning is not installed: skipped")
    from torch.utils.data import DataLoader, IterableDataset

    started = time.perf_counter()
    task, model, _, _, batches = training_parts(setup)
    config, device = setup.config, setup.device
    # Lightning refuses to clip gradients for a fused optimizer under mixed precision: the foreach AdamW.
    optimizer = build_optimizer(model, config.train, fused=False)
    eval_data = place(task.eval_data(), device, config.data.on_device)

    class Batches(IterableDataset):
        def __init__(self, source: Callable[[], Iterator]) -> None:
            self.source = source

        def __iter__(self) -> Iterator:
            return self.source()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: tuple, _: int) -> torch.Tensor:
            return task.loss(self.model(devices.to_device(batch[0], device, task.channels_last)), batch[1])

        def validation_step(self, batch: tuple, _: int) -> None:
            outputs = self.model(devices.to_device(batch[0], device, task.channels_last))
            self.log("val_loss", task.loss(outputs, batch[1]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer

    class Clock(L.Callback):
        steady_start = 0.0

        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == setup.warmup:
                sync(device)
                self.steady_start = time.perf_counter()

    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if devices.precision_for(device, config.train.precision) == "bf16" else "32-true",
            max_steps=setup.steps,
            val_check_interval=setup.every,
            check_val_every_n_epoch=None,
            gradient_clip_val=config.train.grad_clip_norm or None,
            callbacks=[clock, L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=setup.every)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        train_loader = DataLoader(Batches(lambda: batches), batch_size=None)
        val_loader = DataLoader(
            Batches(lambda: zip(*(t.split(config.eval.batch_size) for t in eval_data.tensors), strict=True)),
            batch_size=None,
        )
        trainer.fit(Module(), train_loader, val_loader)
    sync(device)
    ended = time.perf_counter()
    rate = (setup.steps - setup.warmup) / (ended - clock.steady_start)
    return Result(rate, ended - started, "foreach AdamW: Lightning cannot clip a fused one under AMP")


TORCHRUN_1 = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]


def run_train_py(setup: Setup, eval_device: str | None, launcher: list[str] | None = None) -> Result:
    """train.py as users run it, checkpointing every `every` steps; optionally with an eval.py daemon, or
    started by a `launcher` (torchrun: DDP with one process)."""
    with tempfile.TemporaryDirectory() as folder:
        train_dir = Path(folder) / "run"
        train_dir.mkdir()
        sets = [
            *setup.overrides,
            f"train.steps={setup.steps}",
            f"checkpoint.every_steps={setup.every}",
            "checkpoint.every_secs=0",
            f"log.every_steps={setup.warmup}",
            "checkpoint.max_unevaluated=0",  # the trainer never waits on, or keeps files for, the evaluator
        ]
        args = ["--config", setup.config_path, *(a for s in sets for a in ("--set", s))]
        logs = Path(folder)
        evaluator = None
        if eval_device:
            env = {**os.environ, "OMP_NUM_THREADS": str(setup.eval_threads)}
            evaluator = spawn(["eval.py", "--train-dir", str(train_dir), "--device", eval_device, *args], logs, env)
        started = time.perf_counter()
        device = "cuda" if launcher and setup.device.type == "cuda" else str(setup.device)  # torchrun: cuda:LOCAL_RANK
        command = [*(launcher or []), "train.py", "--train-dir", str(train_dir), "--device", device, *args]
        trainer = spawn(command, logs, name="train.py")
        if trainer.wait() != 0:
            raise RuntimeError(f"train.py failed:\n{(logs / 'train.py.log').read_text()[-3000:]}")
        wall = time.perf_counter() - started
        evaluated = 0
        if evaluator:
            evaluator.send_signal(signal.SIGTERM)
            evaluator.wait()
            evaluated = len(read_records(train_dir / "eval" / "results.jsonl"))
        events = EventAccumulator(str(train_dir / "train"))
        events.Reload()
        points = {e.step: e.wall_time for e in events.Scalars("loss")}
        rate = (setup.steps - setup.warmup) / (points[setup.steps] - points[setup.warmup])
        return Result(rate, wall, f"eval.py evaluated {evaluated} checkpoints meanwhile" if evaluator else "")


def spawn(command: list[str], logs: Path, env: dict[str, str] | None = None, name: str = "") -> subprocess.Popen:
    with open(logs / f"{name or command[0]}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def flops_per_step(setup: Setup) -> float:
    """Floating-point operations of one training step (forward and backward), counted by torch."""
    _, _, _, step, _ = training_parts(setup)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device) -> float:
    """Measured bf16 matrix-product rate (FLOP/s): the ceiling for model FLOP utilisation."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / sorted(times)[len(times) // 2]


VARIANTS: dict[str, tuple[str, Callable[[Setup], Result]]] = {
    "a": ("bare loop (the limit)", bare_loop),
    "b": ("train.py, checkpoints + logging", lambda s: run_train_py(s, None)),
    "c": ("train.py + eval.py on the CPU", lambda s: run_train_py(s, "cpu")),
    "d": ("train.py + eval.py on the same GPU", lambda s: run_train_py(s, "cuda")),
    "e": ("classic loop: train, stop, validate", classic_loop),
    "f": ("PyTorch Lightning Trainer", lightning_loop),
    "g": ("torchrun --nproc-per-node 1 train.py", lambda s: run_train_py(s, None, TORCHRUN_1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100, help="steps before the steady rate is measured")
    parser.add_argument("--every", type=int, default=500, help="checkpoint and validation cadence, in steps")
    parser.add_argument("--variants", default="abcdefg")
    parser.add_argument("--eval-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--smoke", action="store_true", help="a tiny model and few steps: seconds on a CPU")
    add_results_option(parser)
    args = parser.parse_args()
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    steps, warmup, every = (20, 5, 10) if args.smoke else (args.steps, args.warmup, args.every)
    device = devices.resolve("auto")
    config = load_config(args.config, overrides)
    setup = Setup(args.config, config, overrides, device, steps, warmup, every, args.eval_threads)
    variants = [v for v in args.variants if v in VARIANTS and not (v == "d" and device.type != "cuda")]

    results: list[tuple[str, Result]] = []
    for v in variants:
        try:
            result = VARIANTS[v][1](setup)
        except Exception as err:  # one broken variant must not cost the others' figures
            result = Result(float("nan"), float("nan"), f"failed: {type(err).__name__}: {err}"[:200])
        results.append((v, result))
        print(f"({v}) {VARIANTS[v][0]}: {result}", flush=True)
    # A variant named twice (e.g. --variants abcdefa) runs twice: the GPU's clocks drift as it warms up.
    bare = [r.steps_per_sec for v, r in results if v == "a"]
    base = statistics.median(bare) if bare else None
    rows = []
    for v, result in results:
        ratio = f"{result.steps_per_sec / base:.3f}" if base else ""
        rows.append(
            [f"({v}) {VARIANTS[v][0]}", f"{result.steps_per_sec:.1f}", ratio, f"{result.wall_secs:.1f}", result.note]
        )
    notes = [
        f"{steps} steps, batch {config.data.batch_size}, checkpoints/validation every {every} steps; "
        f"eval.py beside the trainer with {args.eval_threads} CPU threads."
    ]
    if device.type == "cuda" and base:
        flops, rate = flops_per_step(setup), matmul_rate(device)
        for v, result in results:
            if v in "abg":
                mfu = flops * result.steps_per_sec / rate
                notes.append(f"MFU ({v}): {mfu:.1%} of the measured bf16 matmul rate {rate / 1e12:.0f} TFLOP/s")
    if len(bare) > 1:
        notes.append(f"(a) ran {len(bare)} times; ratios are to the median of its runs.")
    notes.append(
        "Targets: (b) >= 0.97 x (a); (c) >= 0.95 x (a); (c) done sooner than (e) and (f); (g) = (b) within noise."
    )
    header = ["variant", "steps/s (steady)", "x (a)", "wall to all steps (s)", "note"]
    report("Training throughput", header, rows, device, args.results, "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
