"""Helpers for tests that start the real train.py and eval.py processes and read what they wrote."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.request import Request, urlopen

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.protocol.layout import CHECKPOINT_TEMP_RE, TrainDir

if TYPE_CHECKING:
    from tests.warm_cli import WarmCli

ROOT = Path(__file__).resolve().parents[1]
# One intra-op thread in every process the tests start, unless the caller set a count: two pytest workers
# each run a trainer beside an evaluator on the same cores, and OpenMP threads waiting on a core another
# process took cost more than they compute (shared/runtime/threads.py). tests/test_threads.py starts its processes
# cold without it, to see the defaults.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing the tests run reaches the Hugging Face Hub: models are random-init, tokenizers trained here.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
# Files a test keeps for people to look at (screenshots); listed at the end of the pytest run.
ARTIFACTS = ROOT / "test-artifacts"
_kept: list[Path] = []
# The skip reason of a test that needs a system tool this machine lacks; the summary counts them per tool.
MISSING_TOOL = "system tool missing: "

# A few seconds of digits training with checkpoints often enough to give the evaluator work; a narrower model
# than the demo's (3x the steps per second on a CPU): the tests are about the processes, not the accuracy.
SHORT_RUN = [
    "--config", "configs/digits.yaml",
    "--set", "model.channels=8",
    "--set", "model.hidden=32",
    "--set", "train.steps=200",
    "--set", "train.warmup_steps=10",
    "--set", "checkpoint.every_steps=40",
    "--set", "log.every_steps=10",
]  # fmt: skip


class RunsCodeWhenUnpickled:
    """A hostile pickle payload: unpickling it touches `marker`, so a test can prove no load ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


# The hang guard of every wait on a process the tests start (a subprocess.run's timeout too), not a speed bound:
# 10x and more what the tests' runs take on a quiet 2-core machine (a minute at most), so a busy machine is no
# failure.
HANG_GUARD = 600


@dataclass
class Proc:
    """A train.py or eval.py process whose combined output goes to a log file."""

    popen: subprocess.Popen
    log: Path

    def wait(self, timeout: float = HANG_GUARD) -> int:
        """The exit code, failing the test after `timeout` seconds (by default the hang guard)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"{self.popen.args} did not exit within {timeout}s; output:\n{self.output()}")

    def wait_while_logging(self, silence: float = 120) -> int:
        """Wait however long the process takes while it keeps logging; fail only once it has printed nothing
        for `silence` seconds. For long CPU-bound runs, whose length a fixed bound cannot know on a slow or
        busy machine; train.py logs every `log.every_steps` steps."""
        wait_while_progressing(lambda: self.popen.poll() is not None, self, "it to exit", silence)
        return self.popen.wait()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def output(self) -> str:
        return self.log.read_text()


# The scripts the `start` fixture runs from the session's warm server (tests/warm_cli.py) unless told `cold`.
WARM_SCRIPTS = ("train.py", "eval.py")
# What they import only as they run, which every warm child would otherwise import again: torch's dynamo (under
# the optimizer's first step: a warm 40-step SHORT_RUN train.py took 3.1 s with it to import, 0.5 s without) and
# Pillow's drawing (eval.py's confusion image). Dependencies only: a fresh `make test` venv has nothing more.
WARM_MODULES = ("torch._dynamo", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont")


@contextmanager
def process_starter(log_dir: Path, warm: WarmCli | None = None) -> Iterator[Callable[..., Proc]]:
    """start("train.py", *args) -> Proc, logging into log_dir; processes still running at the end are killed.

    With a `warm` server, train.py and eval.py run as its forked children (their imports paid once per
    session), unless the call asks for `cold=True`, or for an environment, a preexec_fn or a folder to run in
    (`cwd`, the checkout by default), which must be in place before the imports: then, as every other
    command, they start as a fresh interpreter."""
    procs: list[Proc] = []

    def _start(
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        cold: bool = False,
        cwd: Path = ROOT,
    ) -> Proc:
        log = log_dir / f"{Path(script).stem}-{len(procs)}.log"
        if warm and script in WARM_SCRIPTS and not (cold or env or preexec_fn or cwd != ROOT):
            procs.append(warm.start(script, *args, log=log))
            return procs[-1]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, script, *args],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                preexec_fn=preexec_fn,
            )
        procs.append(Proc(popen, log))
        return procs[-1]

    try:
        yield _start
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
                proc.popen.wait()


@pytest.fixture(scope="session")
def warm_scripts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmCli]:
    """One server per test session (per xdist worker) that has imported train.py and eval.py."""
    from tests.warm_cli import warm_cli  # it builds on Proc, defined here

    with warm_cli(*WARM_SCRIPTS, log_dir=tmp_path_factory.mktemp("warm-server"), modules=WARM_MODULES) as warm:
        yield warm


def finished_run(folder: Path, warm: WarmCli, train_args: list[str], evaluate: bool = False) -> TrainDir:
    """A train_dir `folder/run` trained to its end with `train_args` (and evaluated, with `evaluate`): made
    once by a module-scoped fixture for its tests to copy."""
    train_dir = TrainDir(folder / "run")
    with process_starter(folder, warm) as start:
        trainer = start("train.py", "--train-dir", str(train_dir.root), *train_args)
        assert trainer.wait() == 0, trainer.output()
        if evaluate:
            evaluator = start("eval.py", "--train-dir", str(train_dir.root))
            assert evaluator.wait() == 0, evaluator.output()
    return train_dir


@pytest.fixture
def start(tmp_path: Path, warm_scripts: WarmCli) -> Iterator[Callable[..., Proc]]:
    """start("train.py", *args) -> Proc; every process still running at the end of the test is killed.
    train.py and eval.py start warm (see process_starter); `cold=True` starts a fresh interpreter."""
    with process_starter(tmp_path, warm_scripts) as starter:
        yield starter


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """For code that installs SIGTERM/SIGINT handlers in the test process: pytest gets its own back after."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small file system at `folder` (made if missing), for real ENOSPC and EROFS; unmounted after.

    Needs root (mount(8)); the test is skipped, with the reason, where that is not allowed.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A real cgroup v1 memory cgroup limited to `limit_bytes`, removed after (its processes must be gone).

    Start a process in it with `preexec_fn=join_cgroup(path)`. Skipped, with the reason, without root or
    cgroup v1's memory controller.
    """
    controller = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (controller / "cgroup.procs").exists():
        pytest.skip("a memory limit needs root and cgroup v1's memory controller at /sys/fs/cgroup/memory")
    group = controller / f"trainval-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as err:
        pytest.skip(f"cannot create a memory cgroup here: {err}")
    try:
        yield group
    finally:
        group.rmdir()


def join_cgroup(group: Path) -> Callable[[], None]:
    """A preexec_fn: the child moves itself into `group` before it runs anything."""

    def join() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    return join


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the file system holding `folder` with one file until it is full (ENOSPC), then free about
    `leave` bytes of it again; returns the file, whose removal frees the space."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = bytes(1 << 20)
        while chunk:
            try:
                f.write(chunk)
            except OSError:  # full: go on with smaller pieces until not even one page fits
                chunk = chunk[: len(chunk) // 2] if len(chunk) > 4096 else b""
        f.truncate(max(0, f.tell() - leave))
    return filler


# A hang guard, not a speed bound: about 10x a quiet start of eval.py or train.py (imports, config, first
# write) on this project's 2-core machine, so a busy machine never trips it.
START_GUARD = 600


def wait_for_watching(evaluator: Proc) -> None:
    """The eval.py daemon has started and watches its folder for train.py's config.yaml: it joins (opens its
    ledger, which train.py's retention reads) the moment that appears, long before train.py's first checkpoint."""
    watching = lambda: "waiting for train.py to write" in evaluator.output()  # noqa: E731
    wait_until(watching, START_GUARD, "eval.py to watch its train_dir")


def free_port() -> int:
    """A loopback port free now, for a server a test starts (MLflow, TensorBoard under compose)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_while_progressing(
    condition: Callable[[], bool], progress: Proc, what: str, silence: float = 120, interval: float = 0.05
) -> None:
    """Poll `condition` until it holds, for as long as `progress` keeps logging: fail the test only once that
    process printed nothing for `silence` seconds. The bound for waits on CPU-bound work (training), whose
    length no fixed timeout can know on a busy machine."""
    size, last_change = -1, time.monotonic()
    while not condition():
        if (grown := progress.log.stat().st_size) != size:
            size, last_change = grown, time.monotonic()
        elif time.monotonic() - last_change > silence:
            progress.popen.kill()
            pytest.fail(f"waiting for {what}: {progress.popen.args} printed nothing for {silence}s")
        time.sleep(interval)


def temp_files(train_dir: TrainDir) -> list[str]:
    return [n for n in os.listdir(train_dir.checkpoints) if CHECKPOINT_TEMP_RE.match(n)]


def newest_step(train_dir: TrainDir) -> int:
    from shared.checkpoints.store import list_checkpoints  # imports torch: see assert_every_checkpoint_loads

    found = list_checkpoints(train_dir.checkpoints)
    return found[-1].step if found else 0


def kill_trainer_at_some_moment(trainer: Proc, train_dir: TrainDir, rng: random.Random) -> int:
    """SIGKILL during a checkpoint write (a temp file exists) or at a random moment between writes."""
    before = newest_step(train_dir)
    exited = lambda: trainer.popen.poll() is not None  # noqa: E731
    # Kill only after this run committed a checkpoint of its own, so every run makes progress.
    wait_while_progressing(lambda: newest_step(train_dir) > before or exited(), trainer, "a new checkpoint")
    if rng.random() < 0.5:
        wait_while_progressing(lambda: exited() or bool(temp_files(train_dir)), trainer, "a save", interval=0.0005)
    else:
        time.sleep(rng.uniform(0, 0.1))  # a random moment among the steps: the delay is the point here
    trainer.signal(signal.SIGKILL)
    return trainer.wait()


def assert_every_checkpoint_loads(train_dir: TrainDir) -> None:
    """Every committed checkpoint is whole: `load` raises CheckpointError on a partial one."""
    # Imported here, not at the top: torch must not load in pytest's process before OMP_NUM_THREADS is set.
    from shared.checkpoints.format import load
    from shared.checkpoints.store import list_checkpoints

    for checkpoint in list_checkpoints(train_dir.checkpoints):
        load(checkpoint.path)


def scalar_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point TensorBoard's own loader keeps for `tag` (purges applied)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def steps_by_tag(run: Path, accumulator_module: ModuleType) -> dict[str, list[int]]:
    """Every tag's steps, as one of TensorBoard's loaders keeps them (purges applied), all points kept."""
    accumulator = accumulator_module.EventAccumulator(
        str(run), size_guidance={k: 0 for k in ("scalars", "images", "tensors")}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    found = {}
    for kind, read in (("scalars", "Scalars"), ("images", "Images"), ("tensors", "Tensors")):
        for tag in tags.get(kind, []):
            found[tag] = [event.step for event in getattr(accumulator, read)(tag)]
    return found


def tensorboard_url(log: Path, timeout: float = 60) -> str:
    """The address a starting TensorBoard prints ("TensorBoard 2.x at http://host:port/ ..."), from its log."""
    found: list[str] = []

    def printed() -> bool:
        match = re.search(r"TensorBoard \S+ at (http://\S+?)/? ", log.read_text())
        found.extend(match.groups() if match else ())
        return bool(found)

    wait_until(printed, timeout, f"TensorBoard to print its address in {log}", interval=0.2)
    return found[0]


def fetch_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or, with a body, POST) a TensorBoard HTTP API endpoint and decode its JSON."""
    data = None if body is None else json.dumps(body).encode()
    with urlopen(Request(url, data=data, headers={"Content-Type": "application/json"}), timeout=30) as response:
        return json.loads(response.read())


def keep_artifact(name: str) -> Path:
    """A stable path under test-artifacts/ for a file to keep after the run; pytest lists it at the end."""
    ARTIFACTS.mkdir(exist_ok=True)
    _kept.append(ARTIFACTS / name)
    return _kept[-1]


def system_tool(name: str, *aliases: str) -> str:
    """The path of a system program (`name`, the Debian package, or one of its aliases), or skip the test."""
    for program in (name, *aliases):
        if path := shutil.which(program):
            return path
    pytest.skip(f"{MISSING_TOOL}{name} (`make test` installs it as root; else: sudo apt-get install {name})")


LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), Path("/usr/lib/faketime/libfaketime.so.1"))


def skewed(seconds: int) -> dict[str, str]:
    """The environment of a process whose clock is `seconds` off this host's (a host without NTP), or skip."""
    system_tool("faketime")
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} missing (apt-get install faketime)")
    # Only the wall clock: a monotonic clock is never compared across hosts (and a shifted one would make
    # every timed wait of the process return at once or hours late).
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}", "DONT_FAKE_MONOTONIC": "1"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked `long` first, the rest in their order: two pytest workers, handed whole modules in
    this order, then finish at about the same time instead of one running a long module alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for path in _kept:
        if path.exists():
            terminalreporter.write_line(f"test artifact: {path}")
    missing: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if reason.startswith(f"Skipped: {MISSING_TOOL}"):
            missing[reason.removeprefix(f"Skipped: {MISSING_TOOL}").split()[0]] += 1
    if missing:
        tools = ", ".join(f"{count} for {tool}" for tool, count in sorted(missing.items()))
        terminalreporter.write_line(
            f"skipped {sum(missing.values())} tests for want of a system tool ({tools}): run `make test` as root"
            " on Debian/Ubuntu to install them"
        )
