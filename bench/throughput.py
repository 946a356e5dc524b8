"""Training throughput, side by side in one run: the bare loop (the limit) against train.py alone, with
eval.py beside it (on the CPU, on the same GPU), the classic loop that stops to validate, PyTorch
Lightning's Trainer, and train.py under torchrun with one process. Every variant trains the same model
on the same data with the same optimizer for the same number of steps; each is reported as a ratio to
the bare loop.

    python -m bench.throughput                 # the H100 run: configs/synthetic.yaml
    python -m bench.throughput --smoke         # seconds on a CPU, so the script never rots
    python -m bench.throughput --beside-evaluator --pairs 3   # as a user runs it (below)
    python -m bench.throughput --beside-evaluator --config configs/digits-suites.yaml --suite sampled  # two suites

`--beside-evaluator` measures what an evaluator beside a trainer costs it, the way a user runs the two:
configs/digits.yaml, 1,000 steps, a checkpoint every 50, every option as the config and the project set
it (no --threads: eval.py finds the live trainer and takes its share). train.py alone (A) and train.py with
eval.py started beside it (B) alternate, A B A B ..., so a drift in the machine's speed touches both; each
pair gives B's steps/s over A's, and the table gives their median and spread, with eval.py's CPU-seconds.

Steady steps/s are measured between step `--warmup` and the last step (from train.py's own TensorBoard
events for the process variants), so start-up is excluded there. The wall columns include it: every
variant runs in a process of its own (the in-process loops in a fresh `python -m bench.throughput
--child V`), timed from its start, to its last step and to its final validated checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py and eval.py set it: the loops compare alike

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ROOT, add_results_option, report, results_file
from shared import config as cfg
from shared.evaluation.evaluator import Evaluator
from shared.protocol.layout import DEFAULT_SUITE, TrainDir
from shared.protocol.ledger import read_records
from shared.runtime import devices, seeding
from shared.runtime.devices import place
from shared.tasks import Task
from shared.tasks.loading import build_task, load_config
from shared.training.data import DataPosition, ResumableBatches
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
SMOKE_DIGITS = ["train.warmup_steps=5"]


@dataclass
class Result:
    steps_per_sec: float
    wall_secs: float  # from the start to the last step
    done_secs: float = math.nan  # from the start to the final checkpoint's validation (none: nan)
    note: str = ""
    eval_cpu_secs: float = math.nan  # eval.py's user + system CPU-seconds, from its start to its exit
    lags: str = ""  # each suite's seconds from a checkpoint's step to its record, median / max


@dataclass
class Setup:
    config_path: str
    config: cfg.Config
    overrides: list[str]
    device: torch.device
    steps: int
    warmup: int
    every: int  # checkpoint / validation cadence, in steps
    train_threads: str  # train.py --threads beside eval.py (share: as launch.py and compose)
    eval_threads: str  # eval.py --threads beside the trainer
    eval_nice: int = 0  # eval.py's niceness beside the trainer (0: as launch.py and compose start it)
    as_configured: bool = False  # no --threads, and the config's log.every_steps: as a user runs the two
    suites: tuple[str, ...] = ()  # --beside-evaluator: an eval.py --suite NAME beside the default suite's, each

    def argv(self) -> list[str]:
        """The command-line options that rebuild this setup in a child process."""
        sets = [arg for override in self.overrides for arg in ("--set", override)]
        counts = ["--steps", str(self.steps), "--warmup", str(self.warmup), "--every", str(self.every)]
        return ["--config", self.config_path, *sets, *counts]


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
    batches = iter(ResumableBatches(data, config.data.batch_size, config.seed, DataPosition(), collate_fn=task.collate))

    def step() -> None:
        inputs, targets = task.split(devices.to_device(next(batches), device, task.channels_last))
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(device, config.train.precision):
            loss = task.loss(task.forward(model, inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip_norm or float("inf"))
        optimizer.step()
        schedule.step()

    return task, model, optimizer, step, batches


def tokens_per_step(setup: Setup) -> int | None:
    """How many tokens one training batch holds (the task's own count), or None for a task without tokens."""
    task = build_task(setup.config)
    data = place(task.train_data(), torch.device("cpu"), False)
    batch = next(iter(ResumableBatches(data, setup.config.data.batch_size, 0, DataPosition(), collate_fn=task.collate)))
    tokens = task.tokens(*batch)
    return None if tokens is None else int(tokens)


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
    result.wall_secs = result.done_secs = time.perf_counter() - started
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
        steady_start = last_step = 0.0

        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == setup.warmup:
                sync(device)
                self.steady_start = time.perf_counter()
            self.last_step = time.perf_counter()

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
    note = "foreach AdamW: Lightning cannot clip a fused one under AMP"
    return Result(rate, clock.last_step - started, ended - started, note)


TORCHRUN_1 = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]


def run_train_py(setup: Setup, eval_device: str | None, launcher: list[str] | None = None) -> Result:
    """train.py as users run it, checkpointing every `every` steps; optionally with an eval.py daemon
    beside it (each with its share of the cores, as launch.py and compose start them), or started by a
    `launcher` (torchrun: DDP with one process)."""
    with tempfile.TemporaryDirectory() as folder:
        train_dir = Path(folder) / "run"
        train_dir.mkdir()
        sets = [
            *setup.overrides,
            f"train.steps={setup.steps}",
            f"checkpoint.every_steps={setup.every}",
            "checkpoint.every_secs=0",
            *([] if setup.as_configured else [f"log.every_steps={setup.warmup}"]),
            # The trainer never waits on the evaluator (train.max_eval_lag unset), and retention keeps the
            # checkpoints it has not evaluated yet (max_unevaluated's default): it evaluates every one.
        ]
        args = ["--config", setup.config_path, *(a for s in sets for a in ("--set", s))]
        logs = Path(folder)
        started, evaluators = time.time(), {}
        if eval_device:
            command = ["eval.py", "--train-dir", str(train_dir), "--device", eval_device, *args]
            threads = [] if setup.as_configured else ["--threads", setup.eval_threads]
            for suite in (DEFAULT_SUITE, *setup.suites):
                chosen = [] if suite == DEFAULT_SUITE else ["--suite", suite]
                evaluators[suite] = spawn([*command, *threads, *chosen], logs, f"eval.py-{suite}", setup.eval_nice)
        device = "cuda" if launcher and setup.device.type == "cuda" else str(setup.device)  # torchrun: cuda:LOCAL_RANK
        command = [*(launcher or []), "train.py", "--train-dir", str(train_dir), "--device", device, *args]
        threads = ["--threads", setup.train_threads] if evaluators and not setup.as_configured else []
        trainer = spawn([*command, *threads], logs, "train.py")
        if trainer.wait() != 0:
            raise RuntimeError(f"train.py: {last_line(logs / 'train.py.log')}")
        wall, done, note, eval_cpu = time.time() - started, math.nan, "", math.nan
        events = EventAccumulator(str(train_dir / "train"))
        events.Reload()
        points = {e.step: e.wall_time for e in events.Scalars("loss")}
        rate = (setup.steps - setup.warmup) / (points[setup.steps] - points[setup.warmup])
        if not evaluators:
            return Result(rate, wall)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for suite, evaluator in evaluators.items():  # each exits by itself once its checkpoints are recorded
            if evaluator.wait(timeout=600) != 0:
                raise RuntimeError(f"eval.py --suite {suite}: {last_line(logs / f'eval.py-{suite}.log')}")
        done = time.time() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the children waited for since: the eval.py's alone
        eval_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        ledgers = {suite: read_records(TrainDir(train_dir).for_suite(suite).results) for suite in evaluators}
        note = "evaluated: " + ", ".join(f"{suite} {len(records)}" for suite, records in ledgers.items())
        lags = ", ".join(f"{suite} {record_lags(records, points)}" for suite, records in ledgers.items())
        return Result(rate, wall, done, note, eval_cpu, lags)


def record_lags(records: list[dict], points: dict[int, float]) -> str:
    """Seconds from each checkpoint's step (its time interpolated between train.py's logged steps) to the end
    of its evaluation, median / max: how far the suite's record trails training."""
    steps = sorted(points)
    times = [points[s] for s in steps]
    lags = [
        r["wall_time"] + r["seconds"] - float(np.interp(r["step"], steps, times))
        for r in records
        if r["status"] == "ok"
    ]
    return f"{statistics.median(lags):.2f} / {max(lags):.2f} s" if lags else "none"


def last_line(log: Path) -> str:
    """What a failed process said last: one line, to fit a table cell."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def in_own_process(variant: str) -> Callable[[Setup], Result]:
    """An in-process loop run in a fresh interpreter, as its user's script would run: its times then
    include python's start and the imports, as train.py's do."""

    def run(setup: Setup) -> Result:
        spawned = time.time()
        command = [sys.executable, "-m", "bench.throughput", "--child", variant, *setup.argv()]
        child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        if child.returncode != 0:
            raise RuntimeError(child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "no output")
        fields = json.loads(child.stdout.strip().splitlines()[-1])
        offset = fields.pop("started") - spawned  # the interpreter's start and the imports
        result = Result(**fields)
        result.wall_secs += offset
        result.done_secs += offset
        return result

    return run


def spawn(command: list[str], logs: Path, name: str = "", nice: int = 0) -> subprocess.Popen:
    with open(logs / f"{name or command[0]}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )


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


IN_PROCESS: dict[str, Callable[[Setup], Result]] = {"a": bare_loop, "e": classic_loop, "f": lightning_loop}
VARIANTS: dict[str, tuple[str, Callable[[Setup], Result]]] = {
    "a": ("bare loop (the limit)", in_own_process("a")),
    "b": ("train.py, checkpoints + logging", lambda s: run_train_py(s, None)),
    "c": ("train.py + eval.py on the CPU", lambda s: run_train_py(s, "cpu")),
    "d": ("train.py + eval.py on the same GPU", lambda s: run_train_py(s, "cuda")),
    "e": ("classic loop: train, stop, validate", in_own_process("e")),
    "f": ("PyTorch Lightning Trainer", in_own_process("f")),
    "g": ("torchrun --nproc-per-node 1 train.py", lambda s: run_train_py(s, None, TORCHRUN_1)),
}


def beside_evaluator(setup: Setup, pairs: int, results: Path | None) -> None:
    """A B A B ...: train.py alone, then with eval.py beside it, both as configured; the ratio per pair."""
    load_before = os.getloadavg()[0]
    rows, ratios = [], []
    for pair in range(1, pairs + 1):
        alone, beside = run_train_py(setup, None), run_train_py(setup, "cpu")
        ratios.append(beside.steps_per_sec / alone.steps_per_sec)
        after_training = beside.done_secs - beside.wall_secs
        rows.append(
            [
                pair,
                f"{alone.steps_per_sec:.1f}",
                f"{beside.steps_per_sec:.1f}",
                f"{ratios[-1]:.3f}",
                f"{beside.eval_cpu_secs:.1f}",
                f"{after_training:.1f}",
                beside.lags,
                beside.note,
            ]
        )
        print(f"pair {pair}: alone {alone}, beside eval.py {beside}", flush=True)
    median = statistics.median(ratios)
    notes = [
        f"Ratio B / A: median **{median:.3f}**, spread {min(ratios):.3f} to {max(ratios):.3f} over {pairs} pair(s) "
        "(target: median >= 0.90).",
        f"{setup.config_path}, {setup.steps} steps, a checkpoint every {setup.every}; steps/s from step {setup.warmup} "
        "to the last, from train.py's own events; no --threads: each process as the project sets it.",
        f"Load average (1 min) {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it.",
    ]
    header = [
        "pair",
        "(A) train.py alone, steps/s",
        "(B) beside eval.py, steps/s",
        "B / A",
        "eval.py CPU-s",
        "eval.py done after training (s)",
        "record after its step, median / max",
        "note",
    ]
    title = "Training throughput beside an evaluator"
    report(title, header, rows, setup.device, results, "\n".join(f"- {n}" for n in notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--config", help="default configs/synthetic.yaml; --beside-evaluator: configs/digits.yaml")
    parser.add_argument("--steps", type=int, help="default 2000; --beside-evaluator: 1000")
    parser.add_argument("--warmup", type=int, default=100, help="steps before the steady rate is measured")
    parser.add_argument("--every", type=int, help="checkpoint and validation cadence (default 500; beside: 50)")
    parser.add_argument(
        "--beside-evaluator", action="store_true", help="train.py alone and beside eval.py, as configured, in pairs"
    )
    parser.add_argument("--pairs", type=int, default=3, help="--beside-evaluator: A B pairs (default 3)")
    parser.add_argument(
        "--suite", dest="suites", action="append", default=[], help="--beside-evaluator: also eval.py --suite NAME"
    )
    parser.add_argument("--variants", help="letters, a letter twice to run it twice (default abcdefg; smoke abce)")
    parser.add_argument("--train-threads", default="share", help="train.py --threads beside eval.py (c, d)")
    parser.add_argument("--eval-threads", default="share", help="eval.py --threads beside the trainer (c, d)")
    parser.add_argument("--eval-nice", type=int, default=0, help="eval.py's niceness beside the trainer (c, d)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and few steps: seconds on a CPU")
    parser.add_argument("--child", choices=sorted(IN_PROCESS), help=argparse.SUPPRESS)  # one in-process loop
    add_results_option(parser)
    args = parser.parse_args()
    beside = args.beside_evaluator
    args.config = args.config or ("configs/digits.yaml" if beside else "configs/synthetic.yaml")
    # The smoke overrides shrink the synthetic model; digits is small already, but warms up for 100 steps.
    overrides = [*((SMOKE_DIGITS if beside else SMOKE) if args.smoke else []), *args.overrides]
    steps = args.steps or (1000 if beside else 2000)
    every = args.every or (50 if beside else 500)
    steps, warmup, every = ((20, 10, 10) if beside else (20, 5, 10)) if args.smoke else (steps, args.warmup, every)
    device = devices.resolve("auto")
    config = load_config(args.config, overrides)
    threads = (args.train_threads, args.eval_threads, args.eval_nice, beside, tuple(args.suites))
    setup = Setup(args.config, config, overrides, device, steps, warmup, every, *threads)
    if beside and (warmup % config.log.every_steps or steps % config.log.every_steps):
        parser.error(f"--warmup and --steps: give multiples of log.every_steps ({config.log.every_steps})")
    if beside:
        beside_evaluator(setup, 1 if args.smoke else args.pairs, results_file(args))
        return
    if args.child:
        started = time.time()
        print(json.dumps({"started": started, **dataclasses.asdict(IN_PROCESS[args.child](setup))}))
        return
    # The smoke run keeps to the variants of this project's own code paths (Lightning's import alone takes
    # seconds); --variants adds the others.
    chosen = args.variants or ("abce" if args.smoke else "abcdefg")
    variants = [v for v in chosen if v in VARIANTS and not (v == "d" and device.type != "cuda")]

    tokens = tokens_per_step(setup)
    load_before = os.getloadavg()[0]
    results: list[tuple[str, Result]] = []
    for v in variants:
        try:
            result = VARIANTS[v][1](setup)
        except Exception as err:  # one broken variant must not cost the others' figures
            result = Result(math.nan, math.nan, note=f"failed: {type(err).__name__}: {err}"[:200])
        results.append((v, result))
        print(f"({v}) {VARIANTS[v][0]}: {result}", flush=True)
    # A variant named twice (e.g. --variants abcdefa) runs twice: clocks drift, and other load comes and goes.
    bare = [r.steps_per_sec for v, r in results if v == "a"]
    base = statistics.median(bare) if bare else None
    rows = []
    for v, result in results:
        ratio = f"{result.steps_per_sec / base:.3f}" if base else ""
        done = "" if math.isnan(result.done_secs) else f"{result.done_secs:.1f}"
        rate = f"{result.steps_per_sec:.1f}"
        row = [f"({v}) {VARIANTS[v][0]}", rate, ratio, f"{result.wall_secs:.1f}", done, result.note]
        if tokens:
            row.insert(2, f"{result.steps_per_sec * tokens:,.0f}")
        rows.append(row)
    notes = [
        f"{steps} steps, batch {config.data.batch_size}, checkpoints/validation every {every} steps; "
        f"beside each other, train.py --threads {args.train_threads} and eval.py --threads {args.eval_threads}"
        f"{f' (nice {args.eval_nice})' if args.eval_nice else ''}.",
        f"Load average (1 min) {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it.",
    ]
    if device.type == "cuda" and base:
        flops, rate = flops_per_step(setup), matmul_rate(device)
        for v, result in results:
            if v in "abg":
                mfu = flops * result.steps_per_sec / rate
                notes.append(f"MFU ({v}): {mfu:.1%} of the measured bf16 matmul rate {rate / 1e12:.0f} TFLOP/s")
    if len(bare) > 1:
        spread = (max(bare) - min(bare)) / statistics.median(bare)
        notes.append(
            f"(a) ran {len(bare)} times ({', '.join(f'{b:.1f}' for b in bare)} steps/s, spread {spread:.1%}); "
            "ratios are to their median."
        )
    notes.append(
        "Targets: (b) >= 0.97 x (a); (c) >= 0.90 x (a) on a CPU, 0.95 on a GPU; (c) done no later than (e); "
        "(g) = (b) within noise."
    )
    header = ["variant", "steps/s (steady)", "x (a)", "wall to all steps (s)", "to the last validation (s)", "note"]
    if tokens:
        header.insert(2, "tokens/s")
        notes.insert(1, f"{tokens:,} tokens per step ({config.task}).")
    report("Training throughput", header, rows, device, results_file(args), "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
