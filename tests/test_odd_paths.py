"""Paths and permissions as users have them, made for real: a train_dir whose own folder the evaluator may
not write (real file modes, enforced on a root without its override capabilities), `missing/../td`, a
train_dir named `-dash` under launch.py, and a train_dir path near PATH_MAX where a claim is taken over."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.protocol.claims import claim_name
from shared.protocol.layout import TrainDir, weights_name
from shared.protocol.ledger import read_records
from tests.conftest import ROOT, SHORT_RUN, Proc, finished_run
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

TRAIN = [*SHORT_RUN, "--set", "train.steps=40", "--set", "checkpoint.every_steps=20", "--device", "cpu"]
GUARD = 300  # a hang guard for runs of seconds
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> TrainDir:
    """One finished train_dir (checkpoints at 20 and 40), not evaluated, copied by each test."""
    return finished_run(tmp_path_factory.mktemp("trained"), warm_scripts, TRAIN)


def last_line(proc: Proc) -> str:
    return proc.output().strip().splitlines()[-1]


def without_file_overrides() -> None:
    """A preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the program this
    process execs runs as root but obeys file modes as any other user does (its capabilities come from the
    bounding set). The tests run as root here, and the interpreter under /root is unreachable for `nobody`."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def file_modes_apply(probe: Path) -> None:
    """Skip, with the reason, unless a process started with without_file_overrides() is refused a write to a
    read-only folder (not root, or a container that may not drop capabilities)."""
    if os.geteuid() != 0:
        pytest.skip("dropping the file-override capabilities needs root (a non-root run has file modes anyway)")
    probe.mkdir(mode=0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"], preexec_fn=without_file_overrides
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot drop the file-override capabilities here: {err}")
    if done.returncode == 0:
        pytest.skip("a process without CAP_DAC_OVERRIDE still wrote into a read-only folder here")


def test_an_evaluator_that_may_write_eval_but_not_the_train_dir_is_refused_at_start(
    tmp_path: Path, trained: TrainDir, start: Callable[..., Proc]
) -> None:
    """Before, it evaluated the first checkpoint and then stopped at `.best.lock` (exit 1)."""
    file_modes_apply(tmp_path / "probe")
    train_dir = TrainDir(tmp_path / "run")
    shutil.copytree(trained.root, train_dir.root)
    train_dir.eval_run.mkdir(mode=0o777)
    train_dir.root.chmod(0o555)
    try:
        proc = start("eval.py", "--train-dir", str(train_dir.root), preexec_fn=without_file_overrides)
        assert proc.wait(GUARD) == 2, proc.output()
    finally:
        train_dir.root.chmod(0o755)
    assert last_line(proc).startswith(f"eval.py: error: {train_dir.root}: this user may not write there"), proc.output()
    assert "best/ and .best.lock" in last_line(proc) and "Traceback" not in proc.output()
    assert not train_dir.results.exists(), "it started work it could not finish"


def test_an_unreadable_checkpoint_is_recorded_failed_once_and_the_daemon_goes_on(
    tmp_path: Path, trained: TrainDir, start: Callable[..., Proc]
) -> None:
    """chmod 000 on a committed checkpoint (real file modes). Before, the daemon exited 1 on its EACCES at
    every restart, and under launch.py training stopped too. Step 40's weights file alone unreadable: its
    checkpoint serves instead."""
    file_modes_apply(tmp_path / "probe")
    train_dir = TrainDir(tmp_path / "run")
    shutil.copytree(trained.root, train_dir.root)
    unreadable = train_dir.checkpoint(20)
    for path in (unreadable, unreadable.with_name(weights_name(20)), train_dir.checkpoints / weights_name(40)):
        path.chmod(0)
    daemon = start("eval.py", "--train-dir", str(train_dir.root), preexec_fn=without_file_overrides)
    assert daemon.wait(GUARD) == 0, daemon.output()
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [(20, "failed"), (40, "ok")], daemon.output()
    reason = records[0]["reason"]
    assert f"cannot read {unreadable}: EACCES (Permission denied)" in reason and "permissions" in reason, reason
    lines = [line for line in daemon.output().splitlines() if "ckpt-000000020" in line]
    assert len(lines) == 1 and "failed, cannot read" in lines[0], daemon.output()
    assert "ckpt-000000040.weights.pt: cannot read" in daemon.output() and "Traceback" not in daemon.output()

    again = start("eval.py", "--train-dir", str(train_dir.root))  # as root: it could read it, and must not
    assert again.wait(GUARD) == 0, again.output()
    assert read_records(train_dir.results) == records, "a step in the ledger was evaluated again"

    adhoc = start(
        "eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "20", preexec_fn=without_file_overrides
    )
    assert adhoc.wait(GUARD) == 1, adhoc.output()
    assert last_line(adhoc).startswith(f"eval.py: error: {unreadable}: cannot read {unreadable}: EACCES"), (
        adhoc.output()
    )
    assert "Traceback" not in adhoc.output()


def test_missing_dot_dot_is_refused_without_a_stray_folder(tmp_path: Path, start: Callable[..., Proc]) -> None:
    proc = start("train.py", "--train-dir", str(tmp_path / "missing" / ".." / "td"), *TRAIN)
    assert proc.wait(GUARD) == 2, proc.output()
    assert f"{tmp_path / 'missing'} does not exist" in last_line(proc), proc.output()
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in tmp_path.glob("*.log")], "a stray folder"


def test_launch_takes_a_train_dir_named_with_a_leading_dash(tmp_path: Path) -> None:
    """Before, the children's parsers took `-dash` for an option (`--train-dir: expected one argument`). Here
    train.py refuses its config at once (train.steps=0), which shows it parsed --train-dir."""
    launch = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs/digits.yaml"),
         "--train-dir=-dash", "--set", "train.steps=0", "--exit-when-done", "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=GUARD,
    )  # fmt: skip
    output = launch.stdout + launch.stderr
    assert launch.returncode == 2, output
    assert "expected one argument" not in output and "train.steps: must be >= 1" in output, output


def test_a_claim_is_taken_over_in_a_train_dir_near_path_max(
    tmp_path: Path, trained: TrainDir, start: Callable[..., Proc]
) -> None:
    """The train_dir's path is as long as the claim's temp file allows (PATH_MAX 4096 with its NUL); a stale
    claim (its owner dead on this host) is taken over there. Before, the takeover's link was 2 bytes longer
    than the claim's temp and failed with ENAMETOOLONG."""
    temp = f"/eval/claims/.{claim_name(20)}.{'0' * 32}.tmp"
    length = 4095 - len(temp)
    events = f"/eval/events.out.tfevents.{'0' * 10}.{socket.gethostname()}.{'0' * 7}.0"
    if len(events) > len(temp):
        pytest.skip(f"this host's name ({socket.gethostname()}) makes event file names the longest paths")
    root = tmp_path
    while len(str(root)) < length:
        root /= "d" * min(200, length - len(str(root)) - 1)
    assert len(str(root)) == length
    train_dir = TrainDir(root)
    shutil.copytree(trained.root, train_dir.root, dirs_exist_ok=True)
    train_dir.claims.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = {
        "host": socket.gethostname(), "pid": int(dead.stdout), "started": 0.0, "evaluator": f"x:{dead.stdout.strip()}",
        "pid_namespace": os.readlink("/proc/self/ns/pid"), "token": "f" * 32,
    }  # fmt: skip
    train_dir.claims.joinpath(claim_name(20)).write_text(json.dumps(claim))
    proc = start("eval.py", "--train-dir", str(train_dir.root))
    assert proc.wait(GUARD) == 0, proc.output()[-3000:]
    assert "step 20: taking over its claim" in proc.output()
    assert [(r["step"], r["status"]) for r in read_records(train_dir.results)] == [(20, "ok"), (40, "ok")]
