"""Evaluation speed: eval.py's examples/s against a plain torch.inference_mode() loop over the same data at
its best batch size, on the GPU and on the CPU.

    python -m bench.eval_speed                 # configs/synthetic.yaml: ResNet-18-ish, 10k eval examples
    python -m bench.eval_speed --devices cpu --set data.eval_examples=1000 --repeats 2   # a CPU in minutes
    python -m bench.eval_speed --smoke         # a tiny model: seconds on a CPU, so the script never rots

eval.py's figures time shared.evaluation.evaluator.Evaluator, built as eval.py's build_evaluator builds it, on a
checkpoint file shaped like train.py's (weights and optimizer state): load_checkpoint then evaluate (load, forward,
loss and metrics: what the daemon does per checkpoint) and evaluate alone. The plain loop runs the same
model with the same precision and memory layout over the eval inputs already on the device, and takes
only the argmax. Each figure is the median of --repeats runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench.common import add_results_option, device_name, report, results_file
from shared import config as cfg
from shared.checkpoints.store import save
from shared.evaluation.evaluator import Evaluator
from shared.protocol.layout import TrainDir
from shared.runtime import devices
from shared.tasks.loading import build_task, load_config
from shared.training.optim import build_optimizer

SMOKE = ["model.width=8", "model.blocks_per_stage=[1, 1]", "data.eval_examples=512", "eval.batch_size=128"]
BATCH_SIZES = {"cuda": [256, 512, 1024, 2048, 4096, 8192], "cpu": [16, 64, 256, 1024]}


def write_checkpoint(config: cfg.Config, root: Path, step: int = 0) -> Path:
    """A train_dir with config.yaml and a checkpoint as big as train.py's: the weights plus the
    optimizer's state (one step on zero gradients creates it), all of which a full load reads."""
    train_dir = TrainDir(root)
    cfg.save(config, train_dir.config)
    model = build_task(config).build_model()
    optimizer = build_optimizer(model, config.train)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    return save(train_dir, step, state, weights_beside=True)  # as train.py saves


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    run()  # warm-up: allocator, kernels, page cache
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def plain_pass(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device, precision: str) -> None:
    for batch in inputs.split(batch_size):
        with devices.autocast(device, precision):
            model(batch).argmax(dim=-1)


def measure(
    config: cfg.Config, device: torch.device, path: Path, batch_sizes: list[int], repeats: int
) -> tuple[list[list[object]], str]:
    """Table rows for one device, and the plain loop's whole batch-size sweep for the notes."""
    evaluator = Evaluator.from_config(config, device)
    data = next(iter(evaluator.splits.values()))
    if not isinstance(data, TensorDataset):
        raise SystemExit("bench.eval_speed: the plain loop needs a task whose eval data is an in-memory TensorDataset")
    examples = len(data)
    per_checkpoint = median_seconds(lambda: evaluator.evaluate(evaluator.load_checkpoint(path)), device, repeats)
    evaluate_only = median_seconds(lambda: evaluator.evaluate(0), device, repeats)
    inputs = devices.to_device(data.tensors[0], device, evaluator.task.channels_last)
    sweep = {}
    for size in sorted({min(size, examples) for size in batch_sizes}):
        run = functools.partial(plain_pass, evaluator.model, inputs, size, device, evaluator.precision)
        sweep[size] = examples / median_seconds(run, device, repeats)
    best = max(sweep, key=sweep.__getitem__)
    batch = f"batch {config.eval.batch_size}"
    rates = {
        f"eval.py per checkpoint, incl. load ({batch})": examples / per_checkpoint,
        f"eval.py evaluate only ({batch})": examples / evaluate_only,
        f"plain loop, best batch {best}": sweep[best],
    }
    rows: list[list[object]] = [
        [device.type, what, f"{rate:,.0f}", f"{rate / sweep[best]:.2f}"] for what, rate in rates.items()
    ]
    return rows, f"{device.type} plain loop sweep: " + ", ".join(f"{s}: {r:,.0f}/s" for s, r in sweep.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--devices", default="cuda,cpu", help="comma-separated; cuda is skipped where there is none")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure, after one warm-up")
    parser.add_argument(
        "--batch-sizes", help="plain loop sweep, comma-separated (default: 256..8192 GPU, 16..1024 CPU)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 512 examples, 1 repeat: seconds on a CPU")
    add_results_option(parser)
    args = parser.parse_args()
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    repeats = 1 if args.smoke else args.repeats
    config = load_config(args.config, overrides)

    rows, notes, measured = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(config, Path(folder))
        notes.append(
            f"Checkpoint {path.stat().st_size / 2**20:.1f} MiB (weights and optimizer state), from the page cache."
        )
        for name in args.devices.split(","):
            if name.startswith("cuda") and not torch.cuda.is_available():
                print("cuda: no CUDA device here; skipped")
                notes.append("cuda: no CUDA device here; skipped.")
                continue
            device = devices.resolve(name)
            devices.use_fast_math(device, autotune=False)  # as eval.py sets it
            sizes = [int(s) for s in args.batch_sizes.split(",")] if args.batch_sizes else BATCH_SIZES[device.type]
            device_rows, sweep = measure(config, device, path, sizes, repeats)
            rows += device_rows
            notes.append(f"{sweep} (examples/s).")
            measured.append(device)
    if not measured:
        raise SystemExit("bench.eval_speed: no device left to measure; check --devices")
    notes += [
        "Target: eval.py on the GPU >= 0.9 x the plain loop.",
        f"CPU rows: {device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads (torch's default).",
        f"{' '.join([args.config, *overrides])}; median of {repeats} run(s) after a warm-up.",
    ]
    title = "Evaluation speed" + (" (smoke)" if args.smoke else "")
    header = ["device", "what", "examples/s", "ratio to plain"]
    report(title, header, rows, measured[0], results_file(args), "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
