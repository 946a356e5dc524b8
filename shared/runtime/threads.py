"""CPU threads per process: an evaluator beside a trainer on one host takes a few threads at a low CPU
priority, so the trainer keeps its cores.

Two torch processes on one host each start as many intra-op threads as there are cores. An OpenMP thread
that waits on a core the other process took stalls the whole op, so the trainer loses far more than the
evaluator's share of the CPU. Splitting the cores between them costs the trainer the cores the evaluator
leaves idle between checkpoints (it works in bursts); so the trainer keeps every core, and the evaluator
takes a quarter of them at niceness +10, which lets the kernel run it mostly on what the trainer leaves
(docs/benchmarks.md has the measurements).

Waiting OpenMP threads sleep: train.py and eval.py set `OMP_WAIT_POLICY=PASSIVE` before torch loads
(unless it is set). By default GNU OpenMP spins a waiting thread for 300,000 rounds (milliseconds here)
before it sleeps; when the host runs more threads than it has cores (an evaluator, anything else), a
thread spins at each of the step's barriers on the core its teammate needs, and every op then costs a
scheduler time slice: a digits trainer dropped to 2-4 steps/s from 30 at a load average of 6 for as long as
the load lasted (docs/benchmarks.md, "The slow trainer"). `OMP_WAIT_POLICY=` (empty) gives the spinning back.

Each process takes its count from the first of these that is given:

1. `--threads N`, or `--threads share` for this process's share of the host (what launch.py and the
   compose services pass): every core for train.py, the evaluator's share, niced, for eval.py;
2. `$OMP_NUM_THREADS`, which torch itself reads;
3. for eval.py only: a trainer alive on the same train_dir (the pid in its lock file) makes it take the
   evaluator's share, niced, and say so;
4. otherwise torch's default: every core.

Only the evaluator's share changes the priority: `--threads N` is taken as it is.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from shared.errors import UsageError
from shared.protocol.files import RECORD_BYTES, read_file
from shared.protocol.layout import TrainDir

SHARE = "share"
# Added to an evaluator's niceness when it takes its share beside a trainer (0 is the default, 19 the lowest).
EVALUATOR_NICENESS = 10


def host_cores() -> int:
    """The cores this process may run on (a cpuset or `taskset` narrows them), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def evaluator_share(cores: int) -> int:
    """An evaluator's threads beside a trainer: a quarter of the cores, at least one. It works in short
    bursts (one checkpoint at a time), so it needs few, and must not take the trainer's."""
    return max(1, cores // 4)


def trainer_share(cores: int) -> int:
    """The trainer's threads: every core, since the evaluators beside it run at a lower priority."""
    return cores


def option(value: str) -> str:
    """argparse type of --threads: a whole number >= 1, or `share`. UsageError passes through argparse,
    so a bad value is one line and exit code 2 like every bad input (argparse's own error adds its usage)."""
    if value != SHARE and not (value.isdigit() and int(value) >= 1):
        raise UsageError(f"--threads {value!r}: give a whole number >= 1, or {SHARE}")
    return value


@dataclass(frozen=True)
class ThreadChoice:
    count: int | None  # None: torch's default
    why: str
    niceness: int = 0  # added to the process's niceness: an evaluator's share yields the CPU to the trainer


def choose(role: str, option: str | None, train_dir: TrainDir | None = None) -> ThreadChoice:
    """This process's thread count and where it came from; `role` is "train" or "eval"."""
    cores = host_cores()
    if option == SHARE and role == "train":
        return ThreadChoice(trainer_share(cores), f"--threads {SHARE}: every core; evaluators beside it yield")
    if option == SHARE:
        why = f"--threads {SHARE}: the evaluator's share of {cores} cores beside a trainer"
        return ThreadChoice(evaluator_share(cores), why, EVALUATOR_NICENESS)
    if option is not None:
        return ThreadChoice(int(option), "--threads")
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(None, "OMP_NUM_THREADS")
    if role == "eval" and train_dir is not None and (pid := live_trainer(train_dir)) is not None:
        why = f"train.py (pid {pid}) is training this train_dir on this host; --threads N to take more"
        return ThreadChoice(evaluator_share(cores), why, EVALUATOR_NICENESS)
    return ThreadChoice(None, "torch's default; --threads N or share to change it")


def apply(choice: ThreadChoice) -> str:
    """Set the intra- and inter-op thread counts and the niceness; the line for the log saying what this
    process took and why (its caller logs it once the command line's input is known to be good: a bad one
    is one line)."""
    import torch  # here, not at the top: launch.py and the command-line parsers take --threads without torch

    if choice.count is not None:
        torch.set_num_threads(choice.count)
        with contextlib.suppress(RuntimeError):  # only possible before any inter-op work; intra-op matters most
            torch.set_num_interop_threads(choice.count)
    intra, inter = torch.get_num_threads(), torch.get_num_interop_threads()
    line = f"CPU threads: {intra} intra-op, {inter} inter-op of {host_cores()} cores ({choice.why})"
    if choice.niceness:
        os.nice(choice.niceness)  # raising one's own niceness needs no privilege
        line += f"; niceness {os.getpriority(os.PRIO_PROCESS, 0)}, so the trainer's threads run first"
    return line


def live_trainer(train_dir: TrainDir) -> int | None:
    """The pid of a train.py alive on this host that holds (or last held) the train_dir's lock, read
    without taking the lock: probing it would make a trainer starting at that moment refuse to run."""
    try:
        pid = int(read_file(train_dir.lock, RECORD_BYTES).decode().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except (OSError, ValueError):  # no lock file, not a pid, or no such process (on this host)
        return None
    return pid
