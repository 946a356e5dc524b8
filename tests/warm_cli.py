"""Start the real train.py / eval.py command lines many times without paying their imports each time.

A server process imports the scripts once (torch, TensorBoard), then the modules they import only as they run
(`modules`: torch's dynamo under the optimizer, Pillow for the confusion image): about 5 CPU-seconds per start
on this project's machine. Then, per request, it forks a child that runs the script file as `__main__`, as
`python SCRIPT ARGS` would, with its stdout and stderr in a log file. The child is a real process in all but
its imports: its own pid, argv, file descriptors, signal handlers, default logging and warnings; a test may
SIGKILL it, and its exit code is the script's (negative for a signal, as subprocess reports it). What a cold
interpreter prints while importing is not seen here, so a test that uses this keeps a cold start of each
script too. The imports write nothing to disk, so a kill among them would test nothing a warm kill misses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT, Proc

_SERVER = r"""
import atexit, importlib, json, os, runpy, select, sys, traceback

def run_child(request, log):
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

scripts, modules = json.loads(sys.argv[1])
for script in scripts:
    runpy.run_path(script, run_name="__preload__")  # the imports only: nothing below `if __name__` runs
for module in modules:
    importlib.import_module(module)
children, pending, reading = set(), b"", True
while reading or children:
    if select.select([0] if reading else [], [], [], 0.05)[0]:  # a bounded poll, to reap children between
        chunk = os.read(0, 65536)
        reading, pending = bool(chunk), pending + chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            # The log exists before "started" is sent, so a test may stat it at once.
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            pid = os.fork()
            if pid == 0:
                run_child(request, log)
            os.close(log)
            children.add(pid)
            print("started", pid, flush=True)
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        children.discard(pid)
        print("exited", pid, os.waitstatus_to_exitcode(status), flush=True)
"""


class WarmProcess:
    """A child of the server, with the part of subprocess.Popen's interface that tests.conftest.Proc uses."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid, self.args = pid, args
        self.returncode: int | None = None
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(9)

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


class WarmCli:
    """start(script, *args) -> Proc, as tests.conftest's `start` fixture gives, from the warm server."""

    def __init__(self, server: subprocess.Popen, log_dir: Path) -> None:
        self.server, self.log_dir = server, log_dir
        self.children: dict[int, WarmProcess] = {}
        self.started: list[int] = []
        self.lock, self.replied = threading.Lock(), threading.Condition()
        threading.Thread(target=self._read_replies, daemon=True).start()

    def start(self, script: str, *args: str, log: Path | None = None) -> Proc:
        """The child's output goes to `log` (default: a new file in the server's log_dir)."""
        with self.lock:  # one request at a time, so each "started" reply is this request's
            log = log or self.log_dir / f"{Path(script).stem}-warm-{len(self.children)}.log"
            assert self.server.stdin is not None
            self.server.stdin.write(json.dumps({"script": script, "args": list(args), "log": str(log)}) + "\n")
            self.server.stdin.flush()
            with self.replied:
                if not self.replied.wait_for(lambda: self.started or self.server.poll() is not None, timeout=60):
                    raise AssertionError(f"the warm CLI server did not start {script}")
                assert self.started, "the warm CLI server died; see its log"
                process = self.children[self.started.pop()]
        process.args = [script, *args]
        return Proc(process, log)  # Popen's interface, as far as Proc uses it

    def _read_replies(self) -> None:
        assert self.server.stdout is not None
        for line in self.server.stdout:
            event, pid, *code = line.split()
            with self.replied:
                if event == "started":
                    self.children[int(pid)] = WarmProcess(int(pid), [])
                    self.started.append(int(pid))
                else:
                    self.children[int(pid)]._ended(int(code[0]))
                self.replied.notify_all()


@contextmanager
def warm_cli(*scripts: str, log_dir: Path, modules: tuple[str, ...] = ()) -> Iterator[WarmCli]:
    """A server that has imported these scripts, and then `modules` (what they import as they run), run from
    the repo root as the other tests run them; its children still running at the end are killed."""
    with open(log_dir / "warm-server.log", "wb") as errors:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps([scripts, modules])],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    cli = WarmCli(server, log_dir)
    try:
        yield cli
    finally:
        for child in list(cli.children.values()):
            child.kill()
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)
