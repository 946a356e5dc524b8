"""Liveness for containers: train.py's heartbeat file, and the checks the compose health checks run.

    python -m shared.runtime.health heartbeat TRAIN_DIR --max-age SECS   # exit 0 if train.py logged within SECS
    python -m shared.runtime.health http URL                             # exit 0 if URL answers 200 (TensorBoard)

A process that is alive but stuck (a hung data loader, a dead GPU) is what a health check must catch,
so the trainer's check reads a file train.py rewrites at every log step rather than asking whether the
process exists. The checks use only the standard library: the image has no curl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.protocol.files import RECORD_BYTES, NotAFile, read_file, write_atomic
from shared.protocol.layout import TrainDir

log = logging.getLogger(__name__)


def write_heartbeat(path: Path, step: int) -> None:
    """Replace the heartbeat atomically (readers never see half a file); no fsync: it is only a sign of life,
    so a full disk costs a warning (the health check then reports it), never the run."""
    data = json.dumps({"step": step, "wall_time": time.time(), "pid": os.getpid()}) + "\n"
    try:
        write_atomic(path, data.encode(), durable=False)
    except OSError as err:
        log.warning("could not write %s: %s", path, err.strerror or err)


def check_heartbeat(train_dir: Path, max_age: float) -> str | None:
    """None when healthy, else why not."""
    path = TrainDir(train_dir).heartbeat
    try:
        age = time.time() - float(json.loads(read_file(path, RECORD_BYTES))["wall_time"])
    except (OSError, ValueError, KeyError, TypeError, NotAFile) as err:
        return f"no readable heartbeat at {path}: {err}"
    return None if age <= max_age else f"{path} is {age:.0f}s old (more than {max_age:g}s): train.py is stuck"


def check_http(url: str, timeout: float) -> str | None:
    """None when `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError) as err:
        return f"{url}: {err}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.runtime.health", description=__doc__.split("\n\n")[0])
    checks = parser.add_subparsers(dest="check", required=True)
    heartbeat = checks.add_parser("heartbeat", help="train.py wrote its heartbeat within --max-age seconds")
    heartbeat.add_argument("train_dir", type=Path)
    heartbeat.add_argument("--max-age", type=float, default=120.0, metavar="SECS")
    http = checks.add_parser("http", help="the URL answers 200")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=5.0, metavar="SECS")
    args = parser.parse_args(argv)
    if args.check == "heartbeat":
        problem = check_heartbeat(args.train_dir, args.max_age)
    else:
        problem = check_http(args.url, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
