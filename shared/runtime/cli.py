"""What the command lines share: logging, the --config/--set options, flags with ranges, and turning bad
input into one clear line and exit code 2 instead of a traceback."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from shared.errors import RunAborted, UsageError
from shared.runtime import threads

EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`prog: error: ...`), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: an int or a finite float between low and high (NaN and inf are refused)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be between {_plain(low)} and {_plain(high)}, got {text!r}")
        return value

    return parse


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def add_common_options(
    parser: argparse.ArgumentParser, train_dir_required: bool = True, set_example: str = "train.lr=0.01"
) -> None:
    parser.add_argument("--train-dir", required=train_dir_required, help="the run folder train.py and eval.py share")
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value; repeatable, e.g. --set {set_example}",
    )
    parser.add_argument(
        "--threads",
        type=threads.option,
        metavar="N|share",
        help="CPU threads for torch; share: this process's share of the cores beside the other (as compose)",
    )


def os_error_text(err: OSError, prog: str) -> str:
    """An OSError in words, naming its file: "PATH: No space left on device", "PATH is gone (...)"."""
    name = os.fsdecode(err.filename) if err.filename else None
    if isinstance(err, FileNotFoundError) and name:
        return f"{name} is gone (removed or renamed while {prog} ran?)"
    return f"{name}: {err.strerror or err}" if name else str(err.strerror or err)


def os_error_fix(err: OSError) -> str:
    """What to do about an OSError that stopped a run, by its errno: the second half of its one line."""
    if err.errno == errno.EROFS:
        return (
            "its file system is read-only (mounted so, or remounted read-only after a disk error: see dmesg); "
            "remount it read-write"
        )
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that disk"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "give this user write access there"
    return "fix that"


def _one_line_for_io_errors_in_threads(prog: str) -> None:
    """A helper thread (a claim's refresher) that dies of an OSError logs one line, not a traceback; the main
    thread meets the same error at its next write and stops with it."""
    log = logging.getLogger(prog)

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError):
            log.warning("thread %s: %s", args.thread.name if args.thread else "?", os_error_text(args.exc_value, prog))
        else:
            threading.__excepthook__(args)

    threading.excepthook = hook


def run(prog: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its code.

    UsageError becomes one line `prog: error: ...` and exit 2; RunAborted the same line and exit 1, as
    does an OSError (a full disk, a folder removed under the process): files are written so that a run
    stopped at any point resumes (docs/protocol.md).
    """
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {prog} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    _one_line_for_io_errors_in_threads(prog)
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (UsageError, RunAborted) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        code = EXIT_USAGE if isinstance(err, UsageError) else EXIT_ABORTED
    except OSError as err:
        line = f"{os_error_text(err, prog)}; {os_error_fix(err)}, then run the same command to resume"
        print(f"{prog}: error: {line}", file=sys.stderr)
        code = EXIT_ABORTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
