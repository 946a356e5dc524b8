"""Run the real train.py / eval.py command lines many times without paying their imports each time.

A server process imports the scripts once (torch, TensorBoard, scikit-learn: about 4 CPU-seconds per start
on this project's machine), then, per request, forks a child that runs the script file as `__main__`, exactly
as `python SCRIPT ARGS` would, with its stdout and stderr in a log file. The child is a fresh process in all
but its imports: its own pid, argv, file descriptors, default logging and warnings, and its exit code is what
the script exits with. Output a cold interpreter prints while importing is not seen here, so tests that use
this keep one cold start of each script too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT

_SERVER = r"""
import atexit, json, os, runpy, sys, traceback

for script in sys.argv[1:]:
    runpy.run_path(script, run_name="__preload__")  # the imports only: nothing runs below `if __name__`
for request in map(json.loads, sys.stdin):
    pid = os.fork()
    if pid == 0:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = [request["script"], *request["args"]]
        code = 0
        try:
            runpy.run_path(request["script"], run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()  # as the interpreter prints an uncaught exception, and its exit code
            code = 1
        atexit._run_exitfuncs()  # what the interpreter does at exit, before the streams are flushed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class WarmCli:
    """run(script, *args, log=PATH) -> exit code, one run at a time."""

    def __init__(self, server: subprocess.Popen) -> None:
        self.server = server

    def run(self, script: str, *args: str, log: Path) -> int:
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps({"script": script, "args": list(args), "log": str(log)}) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, f"the warm CLI server died (see {log})"
        return int(reply)


@contextmanager
def warm_cli(*scripts: str, log: Path) -> Iterator[WarmCli]:
    """A server that has imported these scripts (run from the repo root, as the other tests run them)."""
    with open(log, "wb") as errors:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *scripts],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        yield WarmCli(server)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)
