"""launch.py as users run it: three real processes, prefixed logs, signals passed on, exit codes."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import launch as launch_script
from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.runtime import threads
from tests.conftest import (
    SHORT_RUN,
    START_GUARD,
    Proc,
    assert_every_checkpoint_loads,
    fetch_json,
    finished_run,
    tensorboard_url,
    wait_until,
    wait_while_progressing,
)

pytestmark = pytest.mark.slow

NAMES = ("launch", "train", "eval", "tensorboard")


def launch(start: Callable[..., Proc], train_dir: TrainDir, *overrides: str, port: int = 0) -> Proc:
    sets = SHORT_RUN[SHORT_RUN.index("--set") :]  # the short run's --set options
    return start(
        "launch.py",
        "--config",
        "configs/digits.yaml",
        "--train-dir",
        str(train_dir.root),
        *sets,
        *overrides,
        "--port",
        str(port),
    )


def child_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started ([\w-]+) \(pid (\d+)\)", output)}


def assert_gone(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)  # launch.py waited for each child, so none is even a zombie
        except ProcessLookupError:
            continue
        pytest.fail(f"{name} (pid {pid}) outlived launch.py")


def test_launcher_runs_all_three_and_stops_them_cleanly_on_ctrl_c(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    launcher = launch(start, train_dir)
    url = tensorboard_url(launcher.log)
    finished = lambda: "every checkpoint is evaluated; best checkpoint" in launcher.output()  # noqa: E731
    wait_while_progressing(finished, launcher, "train and eval")
    # TensorBoard is still serving, and finds the eval run at one of its reloads (a timer, not CPU work).
    wait_until(lambda: sorted(fetch_json(f"{url}/data/runs")) == ["eval", "train"], 120, "TensorBoard's eval run")

    launcher.signal(signal.SIGINT)
    assert launcher.wait() == 0, launcher.output()
    output = launcher.output()
    assert set(child_pids(output)) == {"train", "eval", "tensorboard"}
    assert_gone(child_pids(output))
    for name in ("train", "eval", "tensorboard"):
        assert f"{name} exited with code 0" in output
    prefixes = {line.split(" | ", 1)[0].strip() for line in output.splitlines()}
    assert prefixes == set(NAMES), f"every line carries its process's name: {prefixes}"
    assert re.search(r"^train\s+\| .*training finished at step 200$", output, flags=re.MULTILINE)
    assert re.search(r"^eval\s+\| .*every checkpoint is evaluated$", output, flags=re.MULTILINE)
    cores = threads.host_cores()  # each took its share of the cores, and said so
    for name, share in (("train", threads.trainer_share(cores)), ("eval", threads.evaluator_share(cores))):
        said = rf"^{name}\s+\| .*CPU threads: {share} intra-op, {share} inter-op of {cores} cores \(--threads share"
        assert len(re.findall(said, output, flags=re.MULTILINE)) == 1, name


def test_exit_when_done_stops_tensorboard_after_evaluation(tmp_path: Path, start) -> None:
    """What `make demo` runs: the launcher finishes by itself, exit 0, nothing left running; here with two
    evaluators (--evaluators 2), which share the checkpoints and both exit when all are evaluated, with the
    TensorBoard port already in use (an earlier TensorBoard still serving): TensorBoard serves on another,
    printed, and the train_dir's parent missing, as `runs/` is in a fresh clone."""
    train_dir = TrainDir(tmp_path / "runs" / "run")
    with socket.create_server(("localhost", 0)) as taken:
        port = taken.getsockname()[1]
        launcher = launch(start, train_dir, "--exit-when-done", "--evaluators", "2", port=port)
        assert launcher.wait_while_logging() == 0, launcher.output()
    output = launcher.output()
    served = re.search(rf"port {port} is in use \(an earlier TensorBoard\?\), so TensorBoard serves on (\S+)", output)
    assert served, output
    assert re.search(rf"^tensorboard\s+\| TensorBoard \S+ at {re.escape(served.group(1))} ", output, flags=re.MULTILINE)
    assert set(child_pids(output)) == {"train", "eval-0", "eval-1", "tensorboard"}
    assert "training and evaluation are done (--exit-when-done): stopping all" in output
    for name in ("eval-0", "eval-1", "tensorboard"):
        assert f"{name} exited with code 0" in output
    assert_gone(child_pids(output))
    assert [r["step"] for r in read_records(train_dir.results)] == [40, 80, 120, 160, 200]


def test_training_a_finished_run_on_evaluates_every_new_checkpoint(tmp_path: Path, start, warm_scripts) -> None:
    """ "Train more steps" under --exit-when-done on a run that finished and was evaluated: the evaluator
    started beside train.py (and maybe before it removes the old finished.json) is told that marker is an
    earlier run's, so it evaluates every new checkpoint, train.py never waits for it forever
    (train.max_eval_lag=1), and all exit 0."""
    lagging = ["--set", "train.max_eval_lag=1"]
    train_dir = finished_run(tmp_path, warm_scripts, [*SHORT_RUN, "--set", "train.steps=80", *lagging], evaluate=True)
    more = ["--set", "train.steps=160", "--set", "checkpoint.every_steps=20", *lagging]
    launcher = launch(start, train_dir, "--exit-when-done", *more)
    assert launcher.wait_while_logging() == 0, launcher.output()
    output = launcher.output()
    assert re.search(r"started eval \(pid \d+\): .* --after-finished \d", output), output
    assert "finished.json names step 160: training finished and every checkpoint is evaluated" in output
    assert [r["step"] for r in read_records(train_dir.results)] == [40, 80, 100, 120, 140, 160]


def test_sigterm_mid_training_saves_a_checkpoint_and_stops_all(tmp_path: Path, start) -> None:
    """Also: TensorBoard dying (SIGKILL here) is one warning line; training and evaluation go on."""
    train_dir = TrainDir(tmp_path / "run")
    launcher = launch(start, train_dir, "--set", "train.steps=100000")
    wait_until(lambda: "tensorboard" in child_pids(launcher.output()), START_GUARD, "TensorBoard to start")
    os.kill(child_pids(launcher.output())["tensorboard"], signal.SIGKILL)
    warned = lambda: "warning: TensorBoard failed (its lines above); training and evaluation go on" in launcher.output()  # noqa: E731
    wait_until(warned, START_GUARD, "launch.py's warning")
    evaluated = lambda: bool(train_dir.results.exists() and read_records(train_dir.results))  # noqa: E731
    wait_while_progressing(evaluated, launcher, "an evaluated checkpoint after TensorBoard died")
    launcher.signal(signal.SIGTERM)
    assert launcher.wait() == 0, launcher.output()
    output = launcher.output()
    stopped = re.search(r"stopped at step (\d+); run the same command to resume", output)
    assert stopped, output
    assert list_checkpoints(train_dir.checkpoints)[-1].step == int(stopped.group(1))
    assert not train_dir.finished.exists()
    assert_gone(child_pids(output))
    assert "tensorboard exited with code 137" in output and output.count("warning: TensorBoard") == 1


def test_a_sigkilled_launcher_leaves_no_process_running(tmp_path: Path, start) -> None:
    """SIGKILL cannot be passed on, so the kernel does it (PR_SET_PDEATHSIG): each child gets SIGTERM as
    launch.py dies, and train.py stops as after a Ctrl-C, its checkpoints whole."""
    train_dir = TrainDir(tmp_path / "run")
    launcher = launch(start, train_dir, "--set", "train.steps=100000")
    wait_while_progressing(lambda: bool(list_checkpoints(train_dir.checkpoints)), launcher, "a first checkpoint")
    pids = child_pids(launcher.output())
    launcher.signal(signal.SIGKILL)
    assert launcher.wait() == -signal.SIGKILL
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), START_GUARD, "the children to stop")
    assert not train_dir.finished.exists()
    assert_every_checkpoint_loads(train_dir)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failing_process_stops_the_others_and_sets_the_exit_code(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    launcher = launch(start, train_dir, "--set", "train.no_such_key=1")
    assert launcher.wait() == 2, launcher.output()  # train.py's usage error, passed on
    output = launcher.output()
    assert "train exited with code 2" in output and "train failed: stopping all" in output
    assert "train.py: error: unknown key 'train.no_such_key'" in output
    assert_gone(child_pids(output))


def test_tensorboard_is_left_out_where_it_cannot_listen() -> None:
    """An address this machine does not have (TEST-NET-1): no port at all, so launch.py goes on without it."""
    with socket.create_server(("localhost", 0)) as taken:
        port = taken.getsockname()[1]
        assert launch_script.free_port("localhost", port) not in (None, port)
    assert launch_script.free_port("192.0.2.1", 6006) is None
