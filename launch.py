"""launch.py: train.py, eval.py and TensorBoard as three processes, the way `docker compose up` runs them.

    python launch.py --config configs/digits.yaml --train-dir runs/demo [--set train.steps=3000] [--port 6006]
    python launch.py ... --evaluators 3     # three eval.py processes share the checkpoints (compose --scale eval=3)

The three get the arguments and environment of the compose services (compose.cpu.yml), apart from paths
and TensorBoard's address. Their output is streamed line by line, each line prefixed with the process's
name. Ctrl-C or SIGTERM is passed on to all three as SIGTERM (train.py saves a checkpoint first); a second
Ctrl-C is passed on as SIGINT, which stops train.py at once. When train.py or an eval.py fails, the others
are stopped and launch.py exits with its code; after a clean stop it exits 0. TensorBoard keeps serving after
training and evaluation are done, until you stop it, or, with --exit-when-done (the demo), stops then too.
TensorBoard never stops training: on a port already in use it serves on a free one (the URL is printed),
and if it fails anyway, training and evaluation go on without it (one warning line).

With --folds K it cross-validates: folds 0..K-1 one after the other, each a train.py and an eval.py in
its own train_dir `<train-dir>/fold-<i>` (`data.folds=K`, `data.fold=i`), then prints each metric's mean
and standard deviation over the folds (eval.py --summarize). TensorBoard is left out: the last line says
how to run it on <train-dir> to compare the folds.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from shared.config import MAX_COUNT, MAX_SECS
from shared.evaluation import crossval
from shared.evaluation.export import read_best
from shared.protocol.finished import read_finished
from shared.protocol.layout import TrainDir
from shared.runtime import cli, threads

HERE = Path(__file__).resolve().parent
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}  # as compose.cpu.yml's eval
MAX_EVALUATORS = 64  # eval.py processes on one machine; more is a typo
seconds = cli.number(float, 0, MAX_SECS)


@dataclass(frozen=True)
class Service:
    """One process of the stack: what compose calls a service."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", required=True, type=Path, help="the run folder the three share")
    parser.add_argument("--config", help="train.py's YAML config (leave out to resume from the train_dir's own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--train-gpu", metavar="N", help="the GPU train.py uses (default: cuda:0 if any)")
    parser.add_argument("--eval-gpu", metavar="N", help="evaluate on this GPU instead of the CPU")
    parser.add_argument("--poll", type=seconds, default=0, metavar="SECS", help="eval.py --poll (0: inotify)")
    parser.add_argument(
        "--evaluators",
        type=cli.number(int, 1, MAX_EVALUATORS),
        default=1,
        metavar="N",
        help="eval.py processes sharing the work (compose --scale)",
    )
    for role, default in (("train", "every core"), ("eval", "a quarter of the cores each, at niceness +10")):
        help_text = f"{role}.py --threads (default: {default})"
        parser.add_argument(f"--{role}-threads", type=cli.number(int, 1, MAX_COUNT), metavar="N", help=help_text)
    parser.add_argument("--host", default="localhost", help="TensorBoard's address (default: localhost)")
    parser.add_argument(
        "--port",
        type=cli.number(int, 0, 65535),
        default=6006,
        help="TensorBoard's port (0, or one already in use: a free one)",
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="stop TensorBoard too once training and evaluation are done"
    )
    parser.add_argument(
        "--folds",
        type=cli.number(int, 2, MAX_COUNT),
        metavar="K",
        help="cross-validate: train and evaluate K folds in turn",
    )
    parser.add_argument(
        "--stop-timeout", type=seconds, default=120, metavar="SECS", help="then SIGKILL, as compose's stop_grace_period"
    )
    return parser.parse_args(argv)


def as_argument(path: str | os.PathLike) -> str:
    """A path as a command-line value: `./-dash` for a relative one that starts with a dash, which the
    children's parsers would otherwise take for an option."""
    text = os.fspath(path)
    return f"./{text}" if text.startswith("-") else text


def services(args: argparse.Namespace, train_dir: Path, overrides: list[str] = ()) -> list[Service]:
    """The compose services' commands, with this machine's python and paths (no TensorBoard for a fold)."""
    python = sys.executable
    folder = as_argument(train_dir)
    config = ["--config", as_argument(args.config)] if args.config else []
    sets = [arg for override in [*args.overrides, *overrides] for arg in ("--set", override)]
    evaluate = [python, str(HERE / "eval.py"), "--train-dir", folder, "--device", "auto", *after_finished(train_dir)]
    train_threads, eval_threads = thread_options(args)
    eval_env = {"CUDA_VISIBLE_DEVICES": args.eval_gpu} if args.eval_gpu is not None else CPU_ONLY
    eval_names = ["eval"] if args.evaluators == 1 else [f"eval-{i}" for i in range(args.evaluators)]
    train = [python, str(HERE / "train.py"), *config, "--train-dir", folder, "--device", "auto"]
    stack = [
        Service(
            "train",
            [*train, *train_threads, *sets],
            {"CUDA_VISIBLE_DEVICES": args.train_gpu} if args.train_gpu is not None else {},
        ),
        *(Service(name, [*evaluate, "--poll", f"{args.poll:g}", *eval_threads], eval_env) for name in eval_names),
    ]
    if overrides:
        return stack
    tensorboard = [python, "-m", "tensorboard.main", "--logdir", folder, "--host", args.host]
    return [*stack, Service("tensorboard", [*tensorboard, "--port", str(args.port)])]


def after_finished(train_dir: Path) -> list[str]:
    """eval.py's --after-finished for a train_dir that has finished already: the train.py started beside the
    evaluators removes that marker (to train more steps, say) and may write a new one, but an evaluator that
    starts first must not take the old one for the end of this run's checkpoints and exit at once."""
    marker = read_finished(TrainDir(train_dir))
    return [] if marker is None or marker.wall_time is None else ["--after-finished", repr(marker.wall_time)]


def thread_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """--threads for train.py and for each eval.py: --train-threads/--eval-threads, else each one's share
    of this host (`share`, as the compose services pass it: every core for the trainer, a quarter at a
    lower priority for each evaluator; shared/runtime/threads.py)."""
    return ["--threads", str(args.train_threads or threads.SHARE)], [
        "--threads",
        str(args.eval_threads or threads.SHARE),
    ]


def free_port(host: str, wanted: int) -> int | None:
    """`wanted` if TensorBoard can listen there now, else a free port (the system's choice); None when it can
    listen nowhere on `host` (an address this machine does not have)."""
    for port in (wanted, 0):
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            with socket.create_server((host, port), family=family) as server:
                return server.getsockname()[1]
        except OSError:
            continue
    return None


_PR_SET_PDEATHSIG = 1  # prctl(2)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded before any fork


def stop_when_parent_dies() -> None:
    """In a child, before it runs: on Linux the kernel sends it SIGTERM if launch.py dies, even by SIGKILL
    (which launch.py cannot pass on), so train.py saves a checkpoint and stops instead of running on alone."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    """Starts the services, prefixes their output, passes signals on, and decides the exit code."""

    def __init__(
        self,
        stack: list[Service],
        train_dir: TrainDir,
        stop_timeout: float,
        exit_when_done: bool = False,
        out: IO[str] = sys.stdout,
    ) -> None:
        self.stack, self.train_dir, self.stop_timeout, self.out = stack, train_dir, stop_timeout, out
        self.exit_when_done = exit_when_done
        self.width = max(len(s.name) for s in stack)
        self.names = {s.name for s in stack}
        self.procs: dict[str, subprocess.Popen] = {}
        self.exits: queue.Queue[tuple[str, int]] = queue.Queue()
        self.lock = threading.Lock()
        self.signals = 0
        self.deadline: float | None = None

    def say(self, name: str, line: str) -> None:
        with self.lock:
            self.out.write(f"{name:<{self.width}} | {line.rstrip()}\n")
            self.out.flush()

    def start(self) -> None:
        # Every process before any reader thread: a preexec_fn is only safe to run while no other thread is.
        for service in self.stack:
            self.procs[service.name] = subprocess.Popen(
                service.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **service.env},
                start_new_session=True,  # a terminal's Ctrl-C reaches launch.py only; it passes it on once
                preexec_fn=stop_when_parent_dies,
            )
        for service in self.stack:
            proc = self.procs[service.name]
            threading.Thread(target=self._pump, args=(service.name, proc), daemon=True).start()
            self.say("launch", f"started {service.name} (pid {proc.pid}): {' '.join(service.argv)}")

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(name, raw.decode(errors="replace"))
        self.exits.put((name, proc.wait()))

    def _send(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def stop(self, why: str) -> None:
        """Ask every running process to stop (SIGTERM), once; SIGKILL whatever is left after stop_timeout."""
        if self.deadline is None:
            self.say("launch", f"{why}: stopping all (SIGTERM)")
            self.deadline = time.monotonic() + self.stop_timeout
            self._send(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1 and signum == signal.SIGINT:
            self.say("launch", "second Ctrl-C: stopping at once (SIGINT)")
            self._send(signal.SIGINT)
        self.stop(signal.Signals(signum).name)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        self.start()
        if self.deadline is not None:  # a signal came while starting: pass it on to the late ones too
            self._send(signal.SIGTERM)
        codes: dict[str, int] = {}
        failure = 0
        while len(codes) < len(self.procs):
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            try:
                name, code = self.exits.get(timeout=timeout)
            except queue.Empty:
                self.say("launch", f"still running after {self.stop_timeout:g}s: SIGKILL")
                self._send(signal.SIGKILL)
                self.deadline = None
                continue
            codes[name] = code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as shells say
            self.say("launch", f"{name} exited with code {code}")
            if name == "tensorboard":
                if code != 0 and self.deadline is None:
                    self.say("launch", f"warning: TensorBoard failed (its lines above); {self.without_tensorboard()}")
            elif code != 0:
                failure = failure or code
                self.stop(f"{name} failed")
            elif self.names - {"tensorboard"} <= codes.keys() and self.deadline is None:
                self.say("launch", self.summary())
                if self.exit_when_done:
                    self.stop("training and evaluation are done (--exit-when-done)")
        return failure

    def summary(self) -> str:
        best = read_best(self.train_dir)
        parts = ["training finished and every checkpoint is evaluated"]
        if best:
            parts.append(
                f"best checkpoint: step {best['step']}, {best['metric']}={best['value']:.4f} in {self.train_dir.best}"
            )
        if "tensorboard" in self.procs and self.procs["tensorboard"].poll() is None:
            parts.append("stopping TensorBoard" if self.exit_when_done else "TensorBoard keeps serving: Ctrl-C to stop")
        return "; ".join(parts)

    def without_tensorboard(self) -> str:
        return (
            "training and evaluation go on without it; to see the curves: "
            f"{Path(sys.executable).parent / 'tensorboard'} --logdir {self.train_dir.root} --port 0"
        )


def cross_validate(args: argparse.Namespace) -> int:
    """Each fold in turn (two processes at a time suit a small machine; folds are independent train_dirs,
    so on a bigger one they can as well run side by side by hand), then the summary over all of them."""
    folders = [crossval.fold_folder(args.train_dir, fold) for fold in range(args.folds)]
    for fold, folder in enumerate(folders):
        args.train_dir.mkdir(parents=True, exist_ok=True)
        launcher = Launcher(
            services(args, folder, [f"data.folds={args.folds}", f"data.fold={fold}"]),
            TrainDir(folder),
            args.stop_timeout,
        )
        launcher.say("launch", f"fold {fold} of {args.folds}: {folder}")
        code = launcher.run()
        if code or launcher.signals:
            return code
    crossval.print_summary(folders, as_json=False)
    print(f"compare the folds: {Path(sys.executable).with_name('tensorboard')} --logdir {args.train_dir}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # A fresh clone has no runs/: made here, for the demo's and the docs' runs/NAME (train.py makes the rest).
    args.train_dir.parent.mkdir(parents=True, exist_ok=True)
    if args.folds:
        return cross_validate(args)
    wanted, args.port = args.port, free_port(args.host, args.port)
    stack = [s for s in services(args, args.train_dir) if s.name != "tensorboard" or args.port is not None]
    launcher = Launcher(stack, TrainDir(args.train_dir), args.stop_timeout, args.exit_when_done)
    if args.port is None:
        launcher.say("launch", f"warning: TensorBoard cannot listen on {args.host}; {launcher.without_tensorboard()}")
    else:
        taken = f"port {wanted} is in use (an earlier TensorBoard?), so " if wanted not in (0, args.port) else ""
        launcher.say("launch", f"{taken}TensorBoard serves on http://{args.host}:{args.port}/")
    return launcher.run()


if __name__ == "__main__":
    cli.run("launch.py", main)
