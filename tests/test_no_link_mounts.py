"""A train_dir on a file system without hard links or symlinks (as vfat, exFAT, SMB, gcsfuse, s3fs are): a
real exFAT image on a loop device, mounted through FUSE (exfat-fuse), where link(2) fails with EPERM and
symlink(2) with ENOSYS. Claims, their takeover and the MLflow record are created with O_EXCL; `best` is
a real folder switched by renames (docs/protocol.md, "Faults")."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.protocol.claims import ClaimInfo, claim_name, claim_step
from shared.protocol.layout import TrainDir
from shared.protocol.outcomes import outcome_steps
from tests.conftest import SHORT_RUN, system_tool


@pytest.fixture
def no_links(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB exFAT file system mounted at tmp_path/mnt; needs root, losetup and exfat-fuse."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system image needs root")
    mkfs, fuse = system_tool("exfatprogs", "mkfs.exfat"), system_tool("exfat-fuse", "mount.exfat-fuse")
    image, mount = tmp_path / "exfat.img", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run([mkfs, str(image)], check=True, capture_output=True)
    attached = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    try:
        mounted = subprocess.run([fuse, loop, str(mount)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount exFAT through FUSE here: {mounted.stderr.strip()}")
        try:
            (mount / "probe").touch()
            with pytest.raises(OSError):
                os.link(mount / "probe", mount / "probe-link")
            with pytest.raises(OSError):
                os.symlink("probe", mount / "probe-symlink")
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_a_train_dir_on_a_mount_without_links_trains_and_is_evaluated_by_two_evaluators(no_links: Path, start) -> None:
    """train.py, then two eval.py daemons and a claim left by a dead evaluator of another host, all on the
    mount. Before: every evaluator stopped at its first claim (link: Operation not permitted). Now: every
    checkpoint is recorded once, the dead claim is taken over once, `best` is a real folder holding the
    ledger's best step, and `--checkpoint best` reads it."""
    train_dir = TrainDir(no_links / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN)
    assert trainer.wait_while_logging() == 0, trainer.output()
    train_dir.claims.mkdir(parents=True)
    dead = ClaimInfo(host="another-host", pid=4242, started=time.time(), evaluator="another-host:4242")
    train_dir.claims.joinpath(claim_name(40)).write_text(json.dumps(dead.__dict__))
    args = ["--train-dir", str(train_dir.root), "--poll", "0.2", "--set", "eval.claim_timeout_secs=2"]
    evaluators = [start("eval.py", *args, "--set", "eval.rescan_secs=0.5") for _ in range(2)]
    for evaluator in evaluators:
        assert evaluator.wait() == 0, evaluator.output()

    records = [json.loads(line) for line in train_dir.results.read_text().splitlines()]
    assert [r["step"] for r in records] == [40, 80, 120, 160, 200]
    assert all(r["status"] == "ok" for r in records), records
    logs = "".join(evaluator.output() for evaluator in evaluators)
    assert logs.count("taking over its claim") == 1 and "step 40: taking over its claim" in logs, logs
    assert not outcome_steps(train_dir.pending) and not os.listdir(train_dir.pending)
    assert not [n for n in os.listdir(train_dir.claims) if claim_step(n) is not None], "a claim outlived its record"
    assert train_dir.best.is_dir() and not train_dir.best.is_symlink()
    best = max(records, key=lambda r: (r["metrics"]["accuracy"], -r["step"]))
    assert json.loads((train_dir.best / "metrics.json").read_text())["step"] == best["step"]
    assert [p.name for p in train_dir.root.iterdir() if p.name.startswith(".best-")] == [], "a best folder was left"
    adhoc = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "best")
    assert adhoc.wait() == 0, adhoc.output()
    assert f"{best['metrics']['accuracy']:.4f}" in adhoc.output()
