"""What every benchmark shares: a table printed to the terminal and appended to bench/RESULTS.md with
the device, torch version, date and commit, so figures from different days stay comparable. A `--smoke`
run (or one with `--no-record`) only prints: the committed file holds measurements, not checks that a
script still runs."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, help="Markdown file to append the tables to (default: bench/RESULTS.md; --smoke: none)"
    )
    parser.add_argument("--no-record", action="store_true", help="print the tables only; append them nowhere")


def results_file(args: argparse.Namespace) -> Path | None:
    """Where this run's tables go: --results, else bench/RESULTS.md for a measurement; None: printed only."""
    if args.no_record:
        return None
    return args.results or (None if args.smoke else RESULTS)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def commit() -> str:
    """The commit measured: $TRAINVAL_COMMIT where the tree has no .git (the GPU machine), else git's."""
    if os.environ.get("TRAINVAL_COMMIT"):
        return os.environ["TRAINVAL_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(
    title: str, header: list[str], rows: list[list[object]], device: torch.device, results: Path | None, notes: str = ""
) -> None:
    """Print the table and append it, with where and when it was measured, to `results` (None: print only)."""
    table = markdown_table(header, rows)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{device_name(device)}, torch {torch.__version__}, {when}, commit {commit()}"
    print(f"\n{title} ({meta})\n{table}")
    if notes:
        print(notes)
    if results is None:
        return
    with open(results, "a") as f:
        f.write(f"\n## {title}\n\n{meta}\n\n{table}\n" + (f"\n{notes}\n" if notes else ""))
