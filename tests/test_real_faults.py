"""Faults made for real: a full disk (a small tmpfs), appends cut short, symlinks planted in the train_dir,
and a checkpoint that inflates, evaluated under a real memory limit (a cgroup). Each is one clear line,
never a write outside the train_dir, never a traceback; what was not recorded is done on the next run."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import signal
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from shared.checkpoints.store import list_checkpoints
from shared.errors import UsageError
from shared.protocol.claims import claim_name
from shared.protocol.files import append_line, atomic_file, fsync_dir, make_folder, touch, try_lock, write_atomic
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import Ledger, read_records
from shared.protocol.outcomes import outcome_name
from shared.runtime import cli
from tests.conftest import (
    SHORT_RUN,
    Proc,
    fill_disk,
    join_cgroup,
    memory_cgroup,
    mounted_tmpfs,
    process_starter,
    scalar_points,
    system_tool,
    wait_while_progressing,
)
from tests.warm_cli import WarmCli

STEPS = [20, 40, 60]
# The demo's model, not SHORT_RUN's narrower one: the sizes below (room left on a disk, an inflated size) fit it.
DEMO_MODEL = ["--set", "model.channels=32", "--set", "model.hidden=128"]
TRAIN = [*SHORT_RUN, *DEMO_MODEL, "--set", "train.steps=60", "--set", "checkpoint.every_steps=20", "--device", "cpu"]
TEMP = re.compile(r"\.tmp$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Path:
    """One finished train_dir (checkpoints at STEPS, no evaluation yet), copied by each test that needs it."""
    folder = tmp_path_factory.mktemp("trained")
    with process_starter(folder, warm_scripts) as start:
        trainer = start("train.py", "--train-dir", str(folder / "run"), *TRAIN)
        assert trainer.wait() == 0, trainer.output()
    return folder / "run"


def copy_of(trained: Path, root: Path) -> TrainDir:
    shutil.copytree(trained, root, symlinks=True, dirs_exist_ok=True)
    return TrainDir(root)


def temp_files(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names if TEMP.search(name)]


def last_line(proc: Proc) -> str:
    return proc.output().strip().splitlines()[-1]


def assert_each_step_recorded_once(train_dir: TrainDir, steps: list[int]) -> None:
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == steps and {r["status"] for r in records} == {"ok"}, records
    assert [step for step, _ in scalar_points(train_dir.eval_run, "loss")] == steps


# -- 1. A full disk ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("full", "leave", "writer"),
    [
        ("eval/claims", 0, "claims"),
        ("eval/pending", 0, "outcomes"),
        ("eval", 0, "summaries, the ledger and the recorder's lock"),
        (".", 300_000, "best/ (room for the summaries, not for the exported weights)"),
    ],
)
def test_eval_on_a_full_disk_stops_with_one_line_and_the_next_run_resumes(
    tmp_path: Path, trained: Path, start: Callable[..., Proc], full: str, leave: int, writer: str
) -> None:
    """`full` is a real tmpfs, filled but for `leave` bytes, so that writing `writer` meets ENOSPC."""
    root = tmp_path / "run"
    with mounted_tmpfs(root / full, "32m"):
        train_dir = copy_of(trained, root)
        filler = fill_disk(root / full, leave)
        evaluator = start("eval.py", "--train-dir", str(root))
        assert evaluator.wait() == 1, evaluator.output()
        assert "No space left on device" in last_line(evaluator) and last_line(evaluator).startswith("eval.py: error:")
        assert f"{root}/" in last_line(evaluator), "the line names no file"
        assert "Traceback" not in evaluator.output()
        assert temp_files(root) == [], "a failed write left its temp file"

        filler.unlink()  # space again: the same command records every step, each once
        evaluator = start("eval.py", "--train-dir", str(root))
        assert evaluator.wait() == 0, evaluator.output()
        assert_each_step_recorded_once(train_dir, STEPS)
        assert temp_files(root) == []


# -- 2. Appends cut short ----------------------------------------------------------------------------------


def test_an_append_on_a_full_disk_is_whole_or_raises_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        ledger = disk / "results.jsonl"
        append_line(ledger, '{"step": 1}' + " " * 3000)  # most of one page: the next line only partly fits
        before = ledger.read_bytes()
        filler = fill_disk(disk)
        with pytest.raises(OSError, match="No space left"):
            append_line(ledger, '{"step": 2, "pad": "' + "x" * 5000 + '"}')
        assert ledger.read_bytes() == before, "a failed append left part of its line"
        filler.unlink()
        append_line(ledger, '{"step": 3}')
        assert [r["step"] for r in read_records(ledger)] == [1, 3]


def test_a_cut_last_line_is_cut_off_before_the_next_append(tmp_path: Path) -> None:
    """A real cut file (the bytes a write cut short leaves), for the ledger as a restarted evaluator opens
    it and for any append-only file (decisions.jsonl) at its next append."""
    for name in ("results.jsonl", "decisions.jsonl"):
        path = tmp_path / name
        path.write_bytes(b'{"step": 10, "status": "ok"}\n{"step": 20, "sta')
        append_line(path, '{"step": 30, "status": "ok"}')
        assert path.read_bytes() == b'{"step": 10, "status": "ok"}\n{"step": 30, "status": "ok"}\n'

    ledger_path = tmp_path / "eval" / "results.jsonl"
    make_folder(ledger_path.parent)
    ledger_path.write_bytes(b'{"step": 10, "status": "ok"}\n{"step": 20, "sta')
    ledger = Ledger(ledger_path)
    assert list(ledger.results) == [10] and ledger_path.read_bytes() == b'{"step": 10, "status": "ok"}\n'


# -- 3. Planted symlinks -----------------------------------------------------------------------------------


@contextmanager
def ext4_that_fails(folder: Path) -> Iterator[Callable[[], None]]:
    """A real ext4 (a loop device, errors=remount-ro) at `folder`, unmounted after; yields what makes it fail for
    real: the kernel's own error path (/sys/fs/ext4/<dev>/trigger_fs_error), which remounts it read-only under
    the files open on it, as a disk error does. Skipped, with the reason, without root or the tools."""
    if os.geteuid() != 0:
        pytest.skip("a loop device and mount(8) need root")
    mkfs, losetup = system_tool("e2fsprogs", "mkfs.ext4"), system_tool("losetup")
    image = folder.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([mkfs, "-q", "-F", str(image)], check=True, capture_output=True)
    attached = subprocess.run([losetup, "-f", "--show", str(image)], capture_output=True, text=True)
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        folder.mkdir()
        subprocess.run(["mount", "-o", "errors=remount-ro", device, str(folder)], check=True, capture_output=True)
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger}")
        try:
            yield lambda: trigger.write_text("1")
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
    finally:
        subprocess.run([losetup, "-d", device], check=True)
        image.unlink()


def test_an_ext4_error_under_open_files_is_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    """After a disk error the kernel remounts ext4 read-only: calls on descriptors opened before (a write, the
    fsync of a folder after a rename) fail with an EROFS that names no file. Before, eval.py's and train.py's
    line was then `error: Read-only file system; fix that`; now it names the file and what to do."""
    with ext4_that_fails(tmp_path / "disk") as fail:
        folder = tmp_path / "disk" / "eval"
        make_folder(folder)
        append_line(folder / "results.jsonl", '{"step": 1}')
        fail()
        with pytest.raises(OSError) as raised:
            fsync_dir(folder)  # what follows every rename into place
        assert raised.value.errno == errno.EROFS and raised.value.filename == str(folder), raised.value
        line = f"{cli.os_error_text(raised.value, 'eval.py')}; {cli.os_error_fix(raised.value)}"
        assert line.startswith(f"{folder}: Read-only file system; its file system is read-only"), line
        assert "disk error: see dmesg); remount it read-write" in line, line
        with pytest.raises(OSError) as raised:
            append_line(folder / "results.jsonl", '{"step": 2}')
        assert raised.value.filename == str(folder / "results.jsonl"), raised.value


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """victim(name[, content]) -> a file in tmp_path/outside/ (not in the train_dir); by the test's end
    none may have changed and no other file may be there."""
    folder = tmp_path / "outside"
    folder.mkdir()
    made: dict[Path, bytes] = {}

    def victim(name: str, content: bytes = b"precious") -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (1, 1))  # old: a claim that is a link to it looks long silent
        made[path] = content
        return path

    yield victim
    assert sorted(p for p in folder.rglob("*") if not p.is_dir()) == sorted(made), "a file was made outside"
    for path, content in made.items():
        assert path.read_bytes() == content and os.stat(path).st_mtime == 1, f"{path} was written through a link"


def plant(link: Path, target: Path) -> None:
    """A symlink at `link` (in place of the file there, if any) to `target`."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def test_the_file_writers_never_follow_a_planted_link(tmp_path: Path, outside: Callable[[str], Path]) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    plant(folder / ".config.yaml.tmp", outside("temp"))  # a stale temp that is a link: replaced, not followed
    write_atomic(folder / "config.yaml", b"mine")
    plant(folder / "heartbeat.json", outside("target"))  # the file itself a link: the link is replaced
    with atomic_file(folder / "heartbeat.json", durable=False) as f:
        f.write(b"mine")
    assert not (folder / "heartbeat.json").is_symlink() and (folder / "config.yaml").read_bytes() == b"mine"

    for name, write in [
        (".train.lock", try_lock),
        ("results.jsonl", lambda path: append_line(path, "{}")),
        ("ledger-to-be", touch),
    ]:
        plant(folder / name, outside(name))
        with pytest.raises(UsageError, match="is a symbolic link"):
            write(folder / name)
    plant(folder / "eval", tmp_path / "outside")
    with pytest.raises(UsageError, match="is a symbolic link"):
        make_folder(folder / "eval")


@pytest.mark.slow
def test_train_and_eval_never_write_through_links_planted_in_the_train_dir(
    tmp_path: Path, start: Callable[..., Proc], outside: Callable[[str], Path]
) -> None:
    """Links where each writer puts a temp file or replaces a file: train.py and eval.py run as usual
    and write only inside the train_dir; a checkpoint that is a link to a file outside is `failed`."""
    train_dir = TrainDir(tmp_path / "run")
    for name in (".config.yaml.tmp", ".heartbeat.json.tmp", "heartbeat.json", ".finished.json.tmp"):
        plant(train_dir.root / name, outside(name))
    plant(train_dir.checkpoints / ".ckpt-000000020.pt.tmp", outside("checkpoint-temp"))
    trainer = start("train.py", "--train-dir", str(train_dir.root), *TRAIN)
    assert trainer.wait() == 0, trainer.output()

    plant(train_dir.pending / f".{outcome_name(20)}.tmp", outside("outcome-temp"))
    plant(train_dir.claims / claim_name(40), outside("claim"))  # an old claim (mtime 1): taken over
    plant(train_dir.root / ".best.link.tmp", outside("best-link"))
    plant(train_dir.best_version(20, temp=True), tmp_path / "outside")
    foreign = outside("ckpt-000000030.pt", train_dir.checkpoint(20).read_bytes())
    plant(train_dir.checkpoint(30), foreign)
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()

    records = {r["step"]: r for r in read_records(train_dir.results)}
    assert sorted(records) == [20, 30, 40, 60]
    assert records[30]["status"] == "failed" and "outside" in records[30]["reason"], records[30]
    assert all(records[step]["status"] == "ok" for step in STEPS)
    (line,) = [line for line in evaluator.output().splitlines() if "ckpt-000000030.pt" in line]
    assert "outside" in line
    assert os.readlink(train_dir.best).startswith(".best-") and "Traceback" not in evaluator.output()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "link", "points_to"),
    [
        ("train.py", ".train.lock", "a file"),
        ("train.py", "checkpoints", "a folder"),
        ("eval.py", "eval", "a folder"),
        ("eval.py", "eval/results.jsonl", "a file"),
        ("eval.py", "eval/.eval.lock", "a file"),
        ("eval.py", ".best.lock", "a file"),
    ],
)
def test_a_linked_lock_ledger_or_folder_is_refused_with_one_line(
    tmp_path: Path,
    trained: Path,
    start: Callable[..., Proc],
    outside: Callable[..., Path],
    script: str,
    link: str,
    points_to: str,
) -> None:
    train_dir = copy_of(trained, tmp_path / "run")
    if link == "checkpoints":  # train_dir/checkpoints -> outside/checkpoints, holding the checkpoints
        for checkpoint in sorted(train_dir.checkpoints.iterdir()):
            outside(f"checkpoints/{checkpoint.name}", checkpoint.read_bytes())
        shutil.rmtree(train_dir.checkpoints)
    if points_to == "a file":
        target = outside(link.replace("/", "-"))
    else:
        target = tmp_path / "outside" / link
        target.mkdir(parents=True, exist_ok=True)
    plant(train_dir.root / link, target)
    args = ["--set", "train.steps=80"] if script == "train.py" else []
    proc = start(script, "--train-dir", str(train_dir.root), *args)
    assert proc.wait() == 2, proc.output()
    assert last_line(proc).startswith(f"{script}: error: {train_dir.root / link} is a symbolic link;")
    assert "Traceback" not in proc.output()


# -- 4. A checkpoint that inflates -------------------------------------------------------------------------


def inflating_checkpoint(good: Path, path: Path, unpacked: int) -> None:
    """`good`'s state with one more tensor whose stored record is `unpacked` bytes of zeros, every entry
    deflate-compressed: a file of a few MB whose zip unpacks to `unpacked` bytes."""
    step = int(re.search(r"\d{9}", path.name).group())
    buffer = io.BytesIO()
    torch.save(torch.load(good, weights_only=True) | {"step": step, "padding": torch.zeros(1)}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        records = [name for name in src.namelist() if name.rpartition("/data/")[2].isdigit()]
        padding = max(records, key=lambda name: int(name.rpartition("/data/")[2]))  # the last tensor saved
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as out:
                if info.filename != padding:
                    out.write(src.read(info))
                    continue
                zeros = bytes(1 << 20)
                for _ in range(unpacked >> 20):
                    out.write(zeros)


@pytest.mark.slow
def test_an_inflating_checkpoint_is_failed_under_a_memory_limit(
    tmp_path: Path, trained: Path, start: Callable[..., Proc]
) -> None:
    """A 3 MB checkpoint that unpacks to 1 GiB, among good ones, evaluated by the daemon in a cgroup
    limited to 1 GiB (eval.py needs about 0.4 GB; loading that file took 1.4 GB before it was checked)."""
    train_dir = copy_of(trained, tmp_path / "run")
    bomb = train_dir.checkpoint(30)
    inflating_checkpoint(train_dir.checkpoint(20), bomb.with_name(".ckpt-000000030.pt.tmp"), 1 << 30)
    os.replace(bomb.with_name(".ckpt-000000030.pt.tmp"), bomb)
    assert bomb.stat().st_size < 8 << 20
    with memory_cgroup(1 << 30) as group:
        evaluator = start("eval.py", "--train-dir", str(train_dir.root), preexec_fn=join_cgroup(group))
        code = evaluator.wait()
        peak = int((group / "memory.max_usage_in_bytes").read_text())
    assert code == 0, f"exit {code} (-9: killed at the memory limit); peak {peak / 2**20:.0f} MiB\n{evaluator.output()}"
    records = {r["step"]: r for r in read_records(train_dir.results)}
    assert records[30]["status"] == "failed" and "unpacks to 1025.8 MiB" in records[30]["reason"], records[30]
    assert all(records[step]["status"] == "ok" for step in STEPS)
    print(f"eval.py's peak memory (cgroup max_usage_in_bytes): {peak / 2**20:.0f} MiB")


# -- 8. Folders removed or renamed under running processes -------------------------------------------------


@pytest.mark.slow
def test_a_train_dir_renamed_under_train_py_stops_it_with_one_line_and_it_resumes_once_back(
    tmp_path: Path, start: Callable[..., Proc]
) -> None:
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *TRAIN, "--set", "train.steps=100000")
    wait_while_progressing(lambda: train_dir.checkpoint(40).exists(), trainer, "the checkpoint of step 40")
    moved = train_dir.root.rename(tmp_path / "moved")
    assert trainer.wait() == 1, trainer.output()
    # Checked at every log step and save.
    assert last_line(trainer).startswith(f"train.py: error: {train_dir.root}")
    assert "removed or renamed while train.py ran" in last_line(trainer)
    assert "Traceback" not in trainer.output() and not train_dir.root.exists(), "a new train_dir was made"

    moved.rename(train_dir.root)
    trainer = start("train.py", "--train-dir", str(train_dir.root), *TRAIN, "--set", "train.steps=120")
    assert trainer.wait() == 0, trainer.output()
    assert "resumed from ckpt-" in trainer.output() and train_dir.finished.exists()


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["holds .train.lock", "saved ckpt-000000030.pt"])
def test_a_train_dir_removed_and_made_anew_by_a_second_trainer_stops_the_first_before_it_writes_more(
    tmp_path: Path, start: Callable[..., Proc], moment: str
) -> None:
    """`rm -rf` of the train_dir while the first train.py is stopped (SIGSTOP) right after it took the lock, or
    at its first checkpoint; a second train.py then makes the folder anew and locks its own .train.lock. The
    first, continued, exits 1 with one line and writes nothing more: the checkpoints and config are the
    second's alone (the first saves every 30 steps, the second every 40)."""
    train_dir = TrainDir(tmp_path / "run")
    every_30 = ["--set", "checkpoint.every_steps=30", "--set", "train.steps=600"]  # ends soon if it never stops
    first = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, *every_30)
    wait_while_progressing(lambda: moment in first.output(), first, f"the first train.py to log {moment!r}")
    first.signal(signal.SIGSTOP)
    try:
        shutil.rmtree(train_dir.root)
        second = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=120")
        wait_while_progressing(lambda: "holds .train.lock" in second.output(), second, "the second to take its lock")
    finally:
        first.signal(signal.SIGCONT)
    assert first.wait() == 1, first.output()
    assert last_line(first).startswith(f"train.py: error: {train_dir.root}"), first.output()
    assert "while train.py ran" in last_line(first) and "Traceback" not in first.output()
    assert second.wait() == 0, second.output()
    assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [40, 80, 120]
    config = train_dir.config.read_text()
    assert "  steps: 120\n" in config and "every_steps: 30" not in config, config


@pytest.mark.slow
@pytest.mark.parametrize("vanished", ["eval", "checkpoints"])
def test_a_folder_removed_or_renamed_under_the_daemon_stops_it_with_one_line(
    tmp_path: Path, trained: Path, start: Callable[..., Proc], vanished: str
) -> None:
    """eval/ removed, or checkpoints/ renamed, while the daemon waits for more: one line, exit 1; with the
    folder back (eval/ starts again empty), the same command records every step once."""
    train_dir = copy_of(trained, tmp_path / "run")
    train_dir.finished.unlink()  # training goes on, as far as the daemon knows
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--poll", "0.2")
    recorded = lambda: len(read_records(train_dir.results)) == len(STEPS)  # noqa: E731
    wait_while_progressing(recorded, evaluator, "every step to be recorded")
    folder = train_dir.root / vanished
    if vanished == "eval":
        shutil.rmtree(folder)
    else:
        folder.rename(tmp_path / "elsewhere")
    assert evaluator.wait() == 1, evaluator.output()
    # Checked at every turn of its loop; a write in the folder as it goes may meet the missing path first.
    assert last_line(evaluator).startswith(f"eval.py: error: {folder}")
    assert "removed or renamed while eval.py ran" in last_line(evaluator)
    assert "Traceback" not in evaluator.output()

    if vanished == "checkpoints":
        (tmp_path / "elsewhere").rename(folder)
    train_dir.finished.write_text('{"step": 60, "reason": "completed", "wall_time": 0}\n')
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    assert_each_step_recorded_once(train_dir, STEPS)
