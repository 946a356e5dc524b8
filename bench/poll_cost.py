"""What one poll costs the eval.py daemon when the checkpoints folder holds 10,000 checkpoints.

    python -m bench.poll_cost                       # 10,000 checkpoints under $TMPDIR
    python -m bench.poll_cost --dir /mnt/nfs/tmp    # the same on the mount you will evaluate on (NFS)
    python -m bench.poll_cost --smoke               # 1,000 checkpoints, a few polls: seconds

On NFS there is no inotify across hosts, so `eval.py --poll SECS` looks at the train_dir every SECS.
The train_dir is the steady state of a long run: N committed checkpoint names (empty files: a listing
never opens them) and a ledger that records every one, so each poll finds nothing new, which is what
almost every poll finds. Timed, per poll: the watcher's look (shared/watch.FolderPoll: list checkpoints/
and eval/pending/, check two markers), and one turn of the daemon's loop with nothing to do (the scan,
the ledger's new lines, the pending computation, the claims). For comparison, one snapshot of the
train_dir by watchdog's PollingObserver (what `--poll` used before), which stats every file. Target: the
daemon's poll under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from watchdog.utils.dirsnapshot import DirectorySnapshot

from bench.common import ROOT, add_results_option, report, results_file
from shared import config as cfg
from shared.checkpoints.sources import TRAINVAL
from shared.evaluation.coordination import Coordinator, join_as_evaluator
from shared.evaluation.watch import FolderPoll
from shared.protocol.layout import TrainDir, checkpoint_name
from shared.tasks.loading import load_config

TARGET_MS = 50.0


def make_train_dir(root: Path, checkpoints: int) -> TrainDir:
    """A train_dir whose `checkpoints` checkpoint names are all recorded in its ledger."""
    train_dir = TrainDir(root)
    train_dir.checkpoints.mkdir(parents=True)
    cfg.save(load_config(ROOT / "configs" / "digits.yaml"), train_dir.config)
    join_as_evaluator(train_dir)
    steps = range(100, 100 * (checkpoints + 1), 100)
    lines = []
    for step in steps:
        (train_dir.checkpoints / checkpoint_name(step)).touch()
        record = {"step": step, "file": f"checkpoints/{checkpoint_name(step)}", "status": "ok", "metrics": {}}
        lines.append(json.dumps(record) + "\n")
    train_dir.results.write_text("".join(lines))
    return train_dir


def timings_ms(action: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(what: str, checkpoints: int, times: list[float], target: float | None) -> list[object]:
    median, p95 = statistics.median(times), sorted(times)[int(0.95 * (len(times) - 1))]
    verdict = "" if target is None else ("yes" if p95 < target else "NO")
    return [what, f"{checkpoints:,}", len(times), f"{median:.2f}", f"{p95:.2f}", verdict]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=10_000, help="checkpoint names in the folder")
    parser.add_argument("--polls", type=int, default=200, help="polls timed per row")
    parser.add_argument("--dir", type=Path, help="make the train_dir under this folder (default: $TMPDIR)")
    parser.add_argument("--smoke", action="store_true", help="1,000 checkpoints, 20 polls")
    add_results_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        args.checkpoints, args.polls = 1_000, 20

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        train_dir = make_train_dir(Path(folder) / "run", args.checkpoints)
        config = load_config(train_dir.config)
        watcher = FolderPoll(train_dir, TRAINVAL)
        runs = {"val": train_dir.eval_run}
        with Coordinator(train_dir, config, plot=lambda writer, evaluation: None, runs=runs) as shared:

            def loop_turn() -> None:
                shared.record_ready()
                skipped, claimed = shared.claim_next()
                assert not skipped and claimed is None and shared.all_recorded(), "the folder is not all recorded"

            loop_turn()  # the first turn reads the whole ledger and lists every name once
            look = timings_ms(watcher.look, args.polls)
            turn = timings_ms(loop_turn, args.polls)
            both = [a + b for a, b in zip(look, turn, strict=True)]
            snapshot = timings_ms(lambda: DirectorySnapshot(str(train_dir.root)), max(args.polls // 10, 3))
        where = f"on {args.dir}" if args.dir else "under $TMPDIR"
    rows = [
        row("watcher look (FolderPoll)", args.checkpoints, look, None),
        row("daemon loop turn, nothing new", args.checkpoints, turn, None),
        row("eval.py poll: look + loop turn", args.checkpoints, both, TARGET_MS),
        row("watchdog PollingObserver snapshot (before)", args.checkpoints, snapshot, None),
    ]
    title = "Evaluator poll cost" + (" (smoke)" if args.smoke else "")
    header = ["what", "checkpoints", "polls", "median ms", "p95 ms", f"p95 < {TARGET_MS:g} ms"]
    notes = f"train_dir {where}; every checkpoint already recorded, so each poll finds nothing new."
    report(title, header, rows, torch.device("cpu"), results_file(args), notes)


if __name__ == "__main__":
    main()
