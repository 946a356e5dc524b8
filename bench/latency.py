"""Checkpoint-to-evaluation latency: from the moment a checkpoint is renamed into place to the moment the
eval.py daemon starts loading it, with watchdog's native observer (inotify on Linux) and with polling.

    python -m bench.latency                  # 50 checkpoints per mode, polling every 1 s
    python -m bench.latency --smoke          # 3 checkpoints per mode: seconds on a CPU, so the script never rots

The real eval.py daemon watches a train_dir of a tiny digits model. Checkpoints are committed one at a
time through shared.checkpoints.store.save (temp file, fsync, rename, as train.py does), each only after the
evaluator recorded the previous one, so it is idle when each arrives. Latency is the ledger record's
`wall_time` (taken just before eval.py loads the file) minus the time save() returned. The train_dirs
are made under $TMPDIR: the filesystem is part of what is measured.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from watchdog.observers import Observer

from bench.common import ROOT, add_results_option, report, results_file
from shared import config as cfg
from shared.checkpoints.store import save
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.loading import build_task, load_config

TINY = ["model.channels=4", "model.hidden=8"]
SETTLE = 0.05  # seconds after a record before the next checkpoint: eval.py finishes its record and goes idle
TIMEOUT = 60.0  # seconds to wait for eval.py to start or to record one checkpoint


def make_train_dir(root: Path) -> tuple[TrainDir, dict[str, Any]]:
    """A train_dir with a tiny digits config.yaml and a step-0 checkpoint; returns the state to save again."""
    train_dir = TrainDir(root)
    config = load_config(ROOT / "configs" / "digits.yaml", TINY)
    root.mkdir()
    cfg.save(config, train_dir.config)
    state = {"model": build_task(config).build_model().state_dict()}
    save(train_dir, 0, state)
    return train_dir, state


def wait_until(condition: Callable[[], bool], daemon: subprocess.Popen, log: Path, what: str) -> None:
    """Poll `condition` every few ms; fail with eval.py's output if it exits or TIMEOUT passes first."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"eval.py never got to {what}; its output:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def record_of(train_dir: TrainDir, step: int) -> dict[str, Any] | None:
    return next((r for r in read_records(train_dir.results) if r["step"] == step), None)


def measure(root: Path, count: int, poll: float | None, rng: random.Random) -> tuple[list[float], list[float]]:
    """(latencies, save() durations) in seconds for `count` checkpoints against one eval.py daemon.

    Polling: each checkpoint waits a random fraction of the interval more, so arrivals fall at every
    phase of the poll cycle and the median lands near half the interval.
    """
    train_dir, state = make_train_dir(root)
    log = root.parent / f"{root.name}.log"
    args = [sys.executable, "eval.py", "--train-dir", str(train_dir.root), *(["--poll", str(poll)] if poll else [])]
    with open(log, "wb") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        daemon = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(
            lambda: train_dir.results.exists() and "step(s) already recorded" in log.read_text(),
            daemon,
            log,
            "evaluating",
        )
        wait_until(lambda: record_of(train_dir, 0) is not None, daemon, log, "recording step 0")
        latencies, saves = [], []
        for step in range(1, count + 1):
            time.sleep(SETTLE + (rng.uniform(0, poll) if poll else 0.0))
            started = time.time()
            save(train_dir, step, state)
            renamed = time.time()
            wait_until(lambda s=step: record_of(train_dir, s) is not None, daemon, log, f"recording step {step}")
            record = record_of(train_dir, step)
            if record["status"] != "ok":
                raise RuntimeError(f"eval.py recorded step {step} as {record['status']}: {record['reason']}")
            latencies.append(record["wall_time"] - renamed)
            saves.append(renamed - started)
        daemon.send_signal(signal.SIGTERM)
        if daemon.wait(TIMEOUT) != 0:
            raise RuntimeError(f"eval.py exited {daemon.returncode} on SIGTERM:\n{log.read_text()[-3000:]}")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    return latencies, saves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="checkpoints per mode")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds, for the polling mode")
    parser.add_argument("--modes", default="native,poll", help="comma-separated: native (eval.py), poll (--poll)")
    parser.add_argument("--smoke", action="store_true", help="3 checkpoints per mode, polling every 0.25 s")
    add_results_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.count, args.poll_interval = 3, 0.25
    modes = args.modes.split(",")
    if unknown := set(modes) - {"native", "poll"}:
        parser.error(f"--modes: unknown {sorted(unknown)}; use native and/or poll")

    rows, saves = [], []
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            poll = args.poll_interval if mode == "poll" else None
            latencies, mode_saves = measure(Path(folder) / mode, args.count, poll, rng)
            saves += mode_saves
            ms = np.array(latencies) * 1000
            label = f"polling every {poll:g} s" if poll else f"native ({Observer.__name__})"
            p50, p95 = np.percentile(ms, [50, 95])
            rows.append([label, len(ms), f"{p50:.1f}", f"{p95:.1f}", f"{ms.max():.1f}"])
    notes = [
        f"Targets: native p50 <= 50 ms; polling p50 about half the interval ({args.poll_interval * 500:g} ms).",
        "From save() returning to eval.py's wall_time (just before it loads the file); eval.py idle at each arrival.",
        f"save() also fsyncs the folder after its rename, so figures understate latency by that fsync at most "
        f"(median save() call, writing included: {np.median(saves) * 1000:.1f} ms).",
    ]
    title = "Checkpoint-to-eval latency" + (" (smoke)" if args.smoke else "")
    header = ["mode", "N", "p50 ms", "p95 ms", "max ms"]
    report(title, header, rows, torch.device("cpu"), results_file(args), "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
