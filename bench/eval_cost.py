"""What eval.py spends per checkpoint besides evaluating it, part by part, against the bare evaluation of
the same checkpoint; what each way of loading the weights costs; and what eval.py's start costs.

    python -m bench.eval_cost --config configs/digits.yaml          # the CPU figures in docs/benchmarks.md
    python -m bench.eval_cost --config configs/synthetic.yaml --set data.eval_examples=1000 --set eval.batch_size=256
    python -m bench.eval_cost --smoke         # a tiny synthetic model: seconds, so the script never rots

The daemon's own code runs on checkpoints shaped like train.py's (weights and AdamW state), one after another
as a daemon meets them: eval.py's `evaluate_checkpoint` (load, evaluate every split) and its after-evaluation
actions (the best/ export, the outcome file), and the recorder's turn (read the outcome, TensorBoard points,
the ledger line). best/ is cleared before each checkpoint, so every one is exported: the worst case. cProfile
gives each part's share; the totals are timed again without the profiler. "Bare" is `Evaluator.evaluate` on
the loaded weights, what an in-process validation costs.

The start is measured in CPU-seconds (user + system, from the kernel's accounting of the child), which a
loaded machine inflates far less than wall time: `eval.py --idle-timeout 0` on a train_dir holding only
config.yaml does everything a daemon does before it first waits for a checkpoint (imports, the task's data
and model, joining, the recorder's writers and the confusion image's frame), then exits. `python -c "import
torch"` beside it is the floor no evaluator goes below.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as eval.py sets it

import torch

from bench.common import ROOT, add_results_option, report, results_file
from bench.eval_speed import write_checkpoint
from shared import config as cfg
from shared.checkpoints.format import load, load_weights, restore_model
from shared.checkpoints.store import Checkpoint
from shared.evaluation import actions
from shared.evaluation.coordination import Coordinator, join_as_evaluator
from shared.evaluation.evaluator import Evaluator
from shared.protocol.layout import BEST_VERSION_RE, TrainDir
from shared.tasks.loading import load_config

SMOKE = ["model.width=8", "model.blocks_per_stage=[1, 1]", "data.train_examples=64", "data.eval_examples=64"]

NOT_CALLED = "not called"

# (row, the functions whose cumulative time it is: "file:function" suffixes as cProfile names them)
PARTS = [
    ("load the checkpoint", ["evaluator.py:load_checkpoint"]),
    ("evaluate (every split)", ["evaluator.py:evaluate"]),
    ("best/ export", ["export.py:export_if_best"]),
    ("outcome file: write", ["outcomes.py:write_outcome"]),
    ("outcome file: read", ["outcomes.py:read_outcome"]),
    ("TensorBoard: scalars", ["tensorboard.py:scalar"]),
    ("confusion image: draw", ["confusion.py:confusion_image"]),
    ("TensorBoard: confusion image (PNG)", ["tensorboard.py:image"]),
    ("TensorBoard: confusion text", ["tensorboard.py:text"]),
    ("TensorBoard: PR curves", ["tensorboard.py:pr_curve"]),
    ("TensorBoard: flush", ["tensorboard.py:flush"]),
    ("ledger line", ["ledger.py:append"]),
]


def clear_best(train_dir: TrainDir) -> None:
    train_dir.best.unlink(missing_ok=True)
    for entry in train_dir.root.iterdir():
        if BEST_VERSION_RE.match(entry.name):
            shutil.rmtree(entry)


def daemon_turns(train_dir: TrainDir, config: cfg.Config, steps: list[int]) -> tuple[list[float], Callable]:
    """A daemon's evaluator and a function that evaluates and records one step as eval.py's loop does."""
    eval_py = importlib.import_module("eval")
    evaluator = Evaluator.from_config(config, torch.device("cpu"))
    join_as_evaluator(train_dir)
    shared = Coordinator(
        train_dir, config, eval_py.write_summaries, {s: train_dir.split_run(s) for s in evaluator.splits}
    )
    shared.record_ready()  # elected recorder, writers open: what the daemon has done before its first checkpoint
    after = eval_py.after_evaluation(train_dir, evaluator, config)
    times: list[float] = []

    def turn(step: int) -> None:
        clear_best(train_dir)
        started = time.perf_counter()
        checkpoint = Checkpoint(step, train_dir.checkpoint(step))
        actions.run(after, eval_py.evaluate_checkpoint(checkpoint, evaluator, train_dir))
        shared.record_ready()
        times.append(time.perf_counter() - started)

    turn.evaluator, turn.shared = evaluator, shared  # type: ignore[attr-defined]
    return times, turn


def cumulative(stats: pstats.Stats, suffixes: list[str]) -> float | None:
    """Seconds spent in (and under) the functions named by `suffixes`, over all their calls; None if none
    of them ran (a renamed function, or a part this task does not have)."""
    found = [
        cumtime
        for (filename, _, function), (_, _, _, cumtime, _) in stats.stats.items()  # type: ignore[attr-defined]
        if any(f"{os.path.basename(filename)}:{function}" == s for s in suffixes)
    ]
    return sum(found) if found else None


def measure_daemon(config: cfg.Config, root: Path, count: int) -> tuple[list[list[object]], list[str]]:
    train_dir = TrainDir(root)
    root.mkdir(parents=True)
    steps = list(range(1, 2 * count + 2))
    for step in steps:
        write_checkpoint(config, root, step)
    times, turn = daemon_turns(train_dir, config, steps)
    turn(steps[0])  # warm-up: first-call costs (imports, allocations) are start-up, not per checkpoint
    profiler = cProfile.Profile()
    profiler.enable()
    for step in steps[1 : count + 1]:
        turn(step)
    profiler.disable()
    times.clear()
    for step in steps[count + 1 :]:  # the same work, unprofiled: the totals
        turn(step)
    turn.shared.recorder.close()  # type: ignore[attr-defined]
    evaluator: Evaluator = turn.evaluator  # type: ignore[attr-defined]
    bare = []
    for _ in range(count):
        started = time.perf_counter()
        evaluator.evaluate(steps[-1])
        bare.append(time.perf_counter() - started)
    bare_secs, total = statistics.median(bare), statistics.median(times)
    stats = pstats.Stats(profiler)
    rows: list[list[object]] = [["bare evaluation (in-process validation)", f"{bare_secs * 1000:.1f}", "1.00"]]
    for name, suffixes in PARTS:
        if (spent := cumulative(stats, suffixes)) is None:
            rows.append([name, NOT_CALLED, ""])
        else:
            rows.append([name, f"{spent / count * 1000:.1f}", f"{spent / count / bare_secs:.2f}"])
    rows.append(["eval.py per checkpoint, unprofiled", f"{total * 1000:.1f}", f"{total / bare_secs:.2f}"])
    overhead = total - bare_secs
    notes = [
        f"Fixed cost per checkpoint (total - bare): {overhead * 1000:.1f} ms = {overhead / bare_secs:.2f} x bare "
        "(target <= 2).",
        f"{count} checkpoints profiled (cProfile: the parts' ms include its overhead), {count} timed without it.",
    ]
    return rows, notes


def drop_from_page_cache(path: Path) -> None:
    """Evict one file's pages (clean pages only: nothing is lost), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure_loads(config: cfg.Config, root: Path, repeats: int) -> list[list[object]]:
    """The whole checkpoint (what eval.py read before), the checkpoint mapped (mmap) with only the
    model's tensors touched, and the weights file beside it (what eval.py reads now)."""
    (root / "loads").mkdir()
    path = write_checkpoint(config, root / "loads", 1)
    weights = Checkpoint(1, path).weights
    assert weights is not None
    model = Evaluator.from_config(config, torch.device("cpu")).model
    ways = {
        "whole checkpoint (before)": (path, lambda: load(path)),
        "checkpoint mapped, weights touched": (path, lambda: torch.load(path, weights_only=True, mmap=True)),
        "weights file beside it (now)": (weights, lambda: load_weights(path)),
    }
    rows: list[list[object]] = []
    for what, (file, read) in ways.items():
        for cache in ("warm", "cold"):
            secs = []
            for _ in range(repeats + 1):
                if cache == "cold":
                    drop_from_page_cache(file)
                started = time.perf_counter()
                restore_model(model, read())
                secs.append(time.perf_counter() - started)
            ms = statistics.median(secs[1:]) * 1000
            rows.append([what, cache, f"{file.stat().st_size / 2**20:.1f}", f"{ms:.1f}"])
    return rows


def cpu_seconds(command: list[str]) -> float:
    """User + system CPU-seconds of a child process from its start to its exit (the kernel's rusage)."""
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        assert child.stderr is not None
        raise RuntimeError(f"{' '.join(command)} exited {child.returncode}: {child.stderr.read().decode()[-500:]}")
    return usage.ru_utime + usage.ru_stime


def measure_startup(config: cfg.Config, root: Path, repeats: int) -> list[list[object]]:
    """Median CPU-seconds of eval.py up to its first wait, and of importing torch alone, alternated."""
    train_dir = root / "startup"
    train_dir.mkdir()
    cfg.save(config, train_dir / "config.yaml")  # a train_dir before its first checkpoint
    daemon = [sys.executable, "eval.py", "--train-dir", str(train_dir), "--idle-timeout", "0"]
    commands = {'python -c "import torch" (the floor)': [sys.executable, "-c", "import torch"], "eval.py": daemon}
    spent: dict[str, list[float]] = {what: [] for what in commands}
    for _ in range(repeats):
        for what, command in commands.items():
            spent[what].append(cpu_seconds(command))
    return [
        [what, f"{statistics.median(secs):.2f}", f"{min(secs):.2f}", f"{max(secs):.2f}"] for what, secs in spent.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--checkpoints", type=int, default=10, help="checkpoints profiled, and as many timed")
    parser.add_argument("--starts", type=int, default=5, help="eval.py starts measured (and torch imports)")
    parser.add_argument("--smoke", action="store_true", help="a tiny synthetic model, 2 checkpoints: seconds")
    add_results_option(parser)
    args = parser.parse_args()
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    if args.smoke:
        args.config = "configs/synthetic.yaml"
    count = 2 if args.smoke else args.checkpoints
    config = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config, overrides)
    with tempfile.TemporaryDirectory() as folder:
        rows, notes = measure_daemon(config, Path(folder) / "run", count)
        loads = measure_loads(config, Path(folder), count)
        starts = measure_startup(config, Path(folder), 1 if args.smoke else args.starts)
    what = " ".join([args.config, *overrides])
    notes += [f"{what}; CPU, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}."]
    start_notes = [
        f"eval.py: from its start to its first wait for a checkpoint (--idle-timeout 0, config.yaml alone); {what}; "
        f"median of {1 if args.smoke else args.starts} runs each, alternated; "
        f"load average {os.getloadavg()[0]:.2f} after them.",
        "Target: eval.py <= 2.5 CPU-seconds.",
    ]
    tables = [
        ("Evaluator cost per checkpoint", ["part", "ms per checkpoint", "x bare"], rows, notes),
        (
            "Checkpoint load options",
            ["how", "page cache", "file MiB", "ms to weights in the model"],
            loads,
            ["Median of the runs after one; cold: the file evicted from the page cache first (posix_fadvise)."],
        ),
        ("Evaluator start-up", ["what", "CPU-seconds (user + system), median", "min", "max"], starts, start_notes),
    ]
    for title, header, table, table_notes in tables:
        title += " (smoke)" if args.smoke else ""
        lines = "\n".join(f"- {n}" for n in table_notes)
        report(title, header, table, torch.device("cpu"), results_file(args), lines)


if __name__ == "__main__":
    main()
