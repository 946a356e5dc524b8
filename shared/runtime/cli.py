"""What both command lines share: logging, the --config/--set/--device options, and turning bad input
into one clear line and exit code 2 instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from shared.runtime.errors import RunAborted, UsageError

EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_common_options(parser: argparse.ArgumentParser, train_dir_required: bool = True) -> None:
    parser.add_argument("--train-dir", required=train_dir_required, help="the run folder train.py and eval.py share")
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value; repeatable, e.g. --set train.lr=0.01",
    )


def run(prog: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its code.

    UsageError becomes one line `prog: error: ...` and exit 2; RunAborted the same line and exit 1.
    """
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {prog} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (UsageError, RunAborted) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        code = EXIT_USAGE if isinstance(err, UsageError) else EXIT_ABORTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
