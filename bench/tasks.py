"""The built-in tasks beyond digits, measured with the real train.py and eval.py processes:

- regression: the best r2 on the validation split against scikit-learn's LinearRegression on the same split;
- language model: the best perplexity against the unigram baseline, train.py's tokens/s on this machine,
  and the wall time of training (the CPU demo of configs/language_model.yaml);
- evaluation memory: the eval.py daemon's peak RSS on a language model with a 32k vocabulary (the
  Markov corpus), with streaming metrics against a metric that keeps every position's probabilities and
  concatenates them at the end, which is what the evaluator did before metrics streamed.

    python -m bench.tasks              # about 3 minutes on 2 CPU cores
    python -m bench.tasks --smoke      # seconds: tiny runs, so the script never rots

The processes run as launch.py and compose run them (one thread each, OMP_NUM_THREADS=1 unless set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.common import ROOT, add_results_option, report, results_file
from shared.evaluation.export import read_best
from shared.protocol.layout import TrainDir
from shared.tasks.language import LanguageModelTask
from shared.tasks.loading import build_task, load_config
from shared.tasks.regression import diabetes_split


class KeptProbabilities:
    """Every position's softmax, kept and concatenated at the end: the memory of the evaluator before
    metrics streamed (it kept `softmax(outputs)` of every example for the PR curves)."""

    higher_is_better = None

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.kept.append(torch.softmax(outputs.float(), dim=-1))

    def compute(self) -> float:
        return float(torch.cat(self.kept).max())


class KeepingLanguageModelTask(LanguageModelTask):
    """The built-in language model with KeptProbabilities beside its streaming metrics."""

    def build_metrics(self) -> dict:
        return {**super().build_metrics(), "kept_max_probability": KeptProbabilities()}


def run(script: str, *args: str) -> tuple[float, int]:
    """Run `script` from the repository root; (wall seconds, peak RSS in MiB). Raises on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, script, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"{script} {' '.join(args)} exited {proc.returncode}:\n{log.read().decode()[-3000:]}")
    return time.perf_counter() - started, usage.ru_maxrss // 1024


def train_and_evaluate(root: Path, name: str, config: list[str]) -> tuple[TrainDir, float]:
    """train.py, then the eval.py daemon over its checkpoints; (train_dir, train.py's wall seconds)."""
    train_dir = TrainDir(root / name)
    seconds, _ = run("train.py", "--train-dir", str(train_dir.root), *config)
    run("eval.py", "--train-dir", str(train_dir.root))
    return train_dir, seconds


def sets(*overrides: str) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def regression_rows(root: Path, smoke: bool) -> list[list[object]]:
    steps = ["train.steps=50"] if smoke else []
    train_dir, _ = train_and_evaluate(root, "regression", ["--config", "configs/regression.yaml", *sets(*steps)])
    best = read_best(train_dir)
    x_train, x_val, y_train, y_val = diabetes_split(0.2, 0)
    least_squares = r2_score(y_val, LinearRegression().fit(x_train, y_train).predict(x_val))
    return [
        ["regression: best r2 (val), train.py + eval.py", f"{best['value']:.4f}", f"step {best['step']}"],
        ["regression: r2 of LinearRegression, same split", f"{least_squares:.4f}", "scikit-learn, closed form"],
    ]


def language_rows(root: Path, smoke: bool) -> list[list[object]]:
    tiny = [
        "train.steps=20",
        "train.warmup_steps=5",
        "model.dim=16",
        "model.layers=1",
        "data.train_tokens=4000",
        "checkpoint.every_steps=10",
    ]
    config = ["--config", "configs/language_model.yaml", *sets(*(tiny if smoke else []))]
    train_dir, seconds = train_and_evaluate(root, "language_model", config)
    best = read_best(train_dir)
    baseline = build_task(load_config(train_dir.config)).unigram_perplexity()
    events = EventAccumulator(str(train_dir.train_run), size_guidance={"scalars": 0})
    events.Reload()
    rates = [event.value for event in events.Scalars("tokens_per_sec")][1:]  # the first interval includes start-up
    steps = load_config(train_dir.config).train.steps
    return [
        ["language model: best perplexity (val)", f"{best['value']:.3f}", f"step {best['step']}"],
        ["language model: unigram perplexity (val)", f"{baseline:.3f}", "training-text byte frequencies"],
        ["language model: train.py tokens/s", f"{statistics.median(rates or [0.0]):,.0f}", "median over log steps"],
        ["language model: train.py wall time (s)", f"{seconds:.1f}", f"{steps} steps, incl. start-up"],
    ]


def memory_rows(root: Path, smoke: bool) -> list[list[object]]:
    vocab, sizes = (2048, [1024]) if smoke else (32768, [4096, 8192])
    rows: list[list[object]] = []
    for tokens in sizes:
        for task in ("language_model", "bench.tasks:KeepingLanguageModelTask"):
            train_dir = TrainDir(root / f"memory-{task.split(':')[-1]}-{tokens}")
            config = sets(
                f"task={task}", "data.corpus=markov", f"data.vocab_size={vocab}", f"data.eval_tokens={tokens}",
                "data.train_tokens=4096", "data.batch_size=2", "train.steps=1", "train.warmup_steps=0",
                "train.early_stop.patience=0", "eval.batch_size=8",
            )  # fmt: skip
            run("train.py", "--train-dir", str(train_dir.root), "--config", "configs/language_model.yaml", *config)
            seconds, peak = run("eval.py", "--train-dir", str(train_dir.root))
            kept = tokens * vocab * 4 / 2**20
            what = "streaming metrics" if task == "language_model" else f"probabilities kept ({kept:,.0f} MiB of them)"
            rows.append(
                [f"eval.py peak RSS (MiB), vocab {vocab:,}, {tokens:,} eval tokens: {what}", peak, f"{seconds:.1f}s"]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs, to check that the script works")
    add_results_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rows = regression_rows(root, args.smoke) + language_rows(root, args.smoke) + memory_rows(root, args.smoke)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    notes = f"- One thread per process (OMP_NUM_THREADS={threads}); load average at the end: {os.getloadavg()[0]:.1f}."
    title = "Built-in tasks" + (" (smoke)" if args.smoke else "")
    report(title, ["what", "value", "note"], rows, torch.device("cpu"), results_file(args), notes)


if __name__ == "__main__":
    main()
