"""shared.checkpoints format, store and retention: atomic saves, safe loads, temp-file cleanup, on real files."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import random
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.checkpoints.format import FORMAT_VERSION, load, load_weights, restore_model
from shared.checkpoints.retention import RetentionPolicy, apply_retention
from shared.checkpoints.store import Checkpoint, list_checkpoints, remove_stale_temps, save
from shared.config import CheckpointConfig
from shared.config.schema import MAX_STEP
from shared.errors import CheckpointError
from shared.protocol.layout import RETIRED_NOTES, TrainDir, checkpoint_name, weights_name
from shared.protocol.ledger import Ledger, read_records
from shared.protocol.results import EvalResult
from shared.training import save_policy
from shared.training.agreement import Agreement
from shared.training.checkpoint_writer import CheckpointWriter
from shared.training.checkpointer import Checkpointer
from shared.training.distributed import Distributed
from shared.training.ledger_reader import LedgerReader
from shared.training.nonfinite import NonFiniteGuard
from shared.training.retire import Retirer

ALONE = Agreement(Distributed.alone(), torch.device("cpu"), every_steps=1)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def _save_tiny(train_dir: TrainDir, step: int) -> Path:
    return save(train_dir, step, {"model": {"w": torch.tensor([float(step)])}})


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    """A saved state loads back (weights_only) with equal tensors and plain values, plus step and version."""
    train_dir = TrainDir(tmp_path)
    model = nn.Linear(4, 3)
    state = {
        "model": model.state_dict(),
        "optimizer": {"lr": 0.1, "betas": (0.9, 0.99), "names": ["a", "b"]},
        "position": {"epoch": 2, "batch": 7},
    }
    path = save(train_dir, 7, state)
    assert path == train_dir.checkpoints / "ckpt-000000007.pt"
    assert os.listdir(train_dir.checkpoints) == ["ckpt-000000007.pt"]  # no temp left behind

    loaded = load(path)
    assert loaded["step"] == 7
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["optimizer"] == state["optimizer"]
    assert loaded["position"] == state["position"]
    assert loaded["model"].keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)

    other = nn.Linear(4, 3)
    restore_model(other, loaded)
    assert torch.equal(other.weight, model.weight)


def test_save_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    """Saving the same step again replaces the file whole."""
    train_dir = TrainDir(tmp_path)
    save(train_dir, 5, {"model": {"w": torch.zeros(3)}})
    save(train_dir, 5, {"model": {"w": torch.ones(3)}})
    assert torch.equal(load(train_dir.checkpoint(5))["model"]["w"], torch.ones(3))


def test_list_checkpoints_sorts_by_step_and_skips_other_names(tmp_path: Path) -> None:
    """Only committed `ckpt-<9 digits>.pt` names count, in step order (not name or creation order)."""
    folder = tmp_path / "checkpoints"
    _touch(
        folder,
        "ckpt-000001000.pt",
        "ckpt-000000100.pt",
        "ckpt-000000020.pt",
        ".ckpt-000000100.pt.tmp",
        ".ckpt-000002000.pt.tmp",
        "notes.txt",
        "ckpt-100.pt",
        "ckpt-000000300.pt.bak",
        "xckpt-000000400.pt",
    )
    assert list_checkpoints(folder) == [
        Checkpoint(20, folder / "ckpt-000000020.pt"),
        Checkpoint(100, folder / "ckpt-000000100.pt"),
        Checkpoint(1000, folder / "ckpt-000001000.pt"),
    ]


def test_list_checkpoints_of_missing_folder_is_empty(tmp_path: Path) -> None:
    """Before train.py's first save there is no folder, and that is not an error."""
    assert list_checkpoints(tmp_path / "checkpoints") == []
    assert remove_stale_temps(tmp_path / "checkpoints") == []


def test_remove_stale_temps_removes_only_checkpoint_temps(tmp_path: Path) -> None:
    """Only names matching `.ckpt-<9 digits>.pt.tmp` are deleted; everything else stays."""
    folder = tmp_path / "checkpoints"
    temps = [".ckpt-000000100.pt.tmp", ".ckpt-000000200.pt.tmp"]
    kept = ["notes.txt", "ckpt-000000100.pt", ".ckpt-abc.pt.tmp", ".ckpt-000000100.pt.tmp.old", "ckpt-000000300.pt.tmp"]
    _touch(folder, *temps, *kept)
    removed = remove_stale_temps(folder)
    assert sorted(removed) == sorted(folder / name for name in temps)
    assert sorted(os.listdir(folder)) == sorted(kept)


def test_reader_never_sees_a_partial_checkpoint(tmp_path: Path) -> None:
    """A reader polling the folder while 40 checkpoints of 4 MB are saved (and retention deletes old ones)
    loads every file it lists completely; the only allowed miss is a file deleted after it was listed."""
    train_dir = TrainDir(tmp_path)
    done = threading.Event()
    loaded: list[int] = []
    failures: list[str] = []

    def reader() -> None:
        while not done.is_set():
            for checkpoint in list_checkpoints(train_dir.checkpoints):
                try:
                    state = load(checkpoint.path)
                    weights = state["model"]["w"]
                    if state["step"] != checkpoint.step or weights.numel() != 1 << 20:
                        failures.append(f"{checkpoint.path.name}: wrong contents")
                    elif not bool((weights == checkpoint.step).all()):
                        failures.append(f"{checkpoint.path.name}: wrong values")
                    else:
                        loaded.append(checkpoint.step)
                except FileNotFoundError:
                    continue  # retention deleted it after the listing
                except Exception as err:  # anything else is a torn read
                    failures.append(f"{checkpoint.path.name}: {type(err).__name__}: {err}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    policy = RetentionPolicy(max_to_keep=3)
    try:
        for step in range(1, 41):
            save(train_dir, step, {"model": {"w": torch.full((1 << 20,), float(step))}})
            apply_retention(train_dir.checkpoints, policy, None)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert failures == []
    assert len(set(loaded)) >= 10, "the reader barely ran; the test proved nothing"
    assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [38, 39, 40]


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = save(TrainDir(tmp_path / "good"), 3, {"model": {"w": torch.randn(20_000)}})
    data = good.read_bytes()
    files = {
        "truncated-half": data[: len(data) // 2],
        "truncated-tail": data[:-64],
        "zero-bytes": b"",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated-half", "truncated or corrupt"),
        ("truncated-tail", "truncated or corrupt"),
        ("zero-bytes", "empty file"),
    ],
)
def test_load_refuses_damaged_files(tmp_path: Path, name: str, reason: str) -> None:
    """A cut-short or empty checkpoint raises CheckpointError with the reason, not a torch error."""
    path = _corrupt_files(tmp_path)[name]
    with pytest.raises(CheckpointError, match=reason):
        load(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(random.Random(0).randbytes(4096), id="random-seed0"),
        pytest.param(random.Random(1).randbytes(4096), id="random-seed1"),
        pytest.param(b"PK\x03\x04" + random.Random(3).randbytes(1000), id="zip-magic-then-garbage"),
        pytest.param(random.Random(2).randbytes(4096), id="random-seed2"),
        pytest.param(b"hello world\n", id="text"),
        pytest.param(b"J", id="one-byte"),
    ],
)
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    """Bytes that are not a checkpoint raise CheckpointError (which the evaluator records), nothing else."""
    path = tmp_path / checkpoint_name(1)
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load(path)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        pytest.param({"step": 1, "format_version": 1, "weights": {}}, "no 'model'", id="no-model"),
        pytest.param({"model": {}, "format_version": 1}, "no 'model' and 'step'", id="no-step"),
        pytest.param([1, 2, 3], "not a trainval checkpoint", id="a-list"),
        pytest.param(
            {"model": {}, "step": 1, "format_version": FORMAT_VERSION + 1}, "newer than this trainval", id="newer"
        ),
    ],
)
def test_load_refuses_foreign_contents(tmp_path: Path, state: object, reason: str) -> None:
    """A readable file that is not a trainval checkpoint this version understands raises CheckpointError."""
    path = tmp_path / checkpoint_name(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=reason):
        load(path)


class _RunsCode:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_load_refuses_pickles_that_run_code(tmp_path: Path, writer: str) -> None:
    """A checkpoint whose pickle would call os.system is refused and the command never runs."""
    marker = tmp_path / "pwned"
    payload = {"model": {}, "step": 1, "format_version": 1, "x": _RunsCode(marker)}
    path = tmp_path / checkpoint_name(1)
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "control")))  # the payload really would run code
    assert (tmp_path / "control").exists()

    with pytest.raises(CheckpointError, match="refused to load"):
        load(path)
    assert not marker.exists()


def test_load_lets_a_vanished_file_raise_file_not_found(tmp_path: Path) -> None:
    """A file deleted before it is read raises FileNotFoundError, so the evaluator can record it as skipped."""
    with pytest.raises(FileNotFoundError):
        load(tmp_path / checkpoint_name(1))


def test_restore_model_refuses_a_shape_mismatch() -> None:
    """Weights of another shape raise CheckpointError naming the cause, not RuntimeError."""
    state = {"model": nn.Linear(5, 3).state_dict(), "step": 1}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_model(nn.Linear(4, 3), state)


def test_restore_model_refuses_missing_and_extra_keys() -> None:
    """Loading is strict: a state dict for another architecture is refused."""
    weights = nn.Linear(4, 3).state_dict()
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_model(nn.Linear(4, 3), {"model": {"weight": weights["weight"]}})
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_model(nn.Linear(4, 3), {"model": {**weights, "extra": torch.zeros(1)}})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_restore_model_refuses_non_finite_weights_and_leaves_model_alone(bad: float) -> None:
    """A NaN/Inf weight raises CheckpointError naming it, before any weight is copied into the model."""
    weights = nn.Linear(4, 3).state_dict()
    weights["bias"][1] = bad
    model = nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="'bias' holds NaN or Inf"):
        restore_model(model, {"model": weights, "step": 1})
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


STEPS = list(range(100, 1100, 100))  # 100 .. 1000


@pytest.mark.parametrize(
    ("policy", "last_evaluated", "deleted", "deleted_unevaluated"),
    [
        pytest.param(RetentionPolicy(3), None, list(range(100, 800, 100)), [], id="newest-3"),
        pytest.param(RetentionPolicy(20), None, [], [], id="fewer-than-max"),
        pytest.param(
            RetentionPolicy(3, keep_every_n_steps=500),
            None,
            [100, 200, 300, 400, 600, 700],
            [],
            id="keep-multiples-of-500",
        ),
        pytest.param(
            RetentionPolicy(3, max_unevaluated=20),
            None,
            list(range(100, 800, 100)),
            [],
            id="no-ledger-no-protection",
        ),
        pytest.param(
            RetentionPolicy(3, max_unevaluated=2),
            300,
            [100, 200, 300, 600, 700],
            [600, 700],
            id="protect-2-oldest-unevaluated",
        ),
        pytest.param(RetentionPolicy(3, max_unevaluated=20), -1, [], [], id="nothing-evaluated-all-protected"),
        pytest.param(
            RetentionPolicy(3, max_unevaluated=0),
            300,
            list(range(100, 800, 100)),
            [400, 500, 600, 700],
            id="max-unevaluated-0",
        ),
        pytest.param(
            RetentionPolicy(2, keep_every_n_steps=400, max_unevaluated=1),
            200,
            [100, 200, 500, 600, 700],
            [500, 600, 700],
            id="multiples-do-not-use-up-protection",
        ),
        pytest.param(RetentionPolicy(3, max_unevaluated=5), 1000, list(range(100, 800, 100)), [], id="all-evaluated"),
    ],
)
def test_retention_policy(
    policy: RetentionPolicy, last_evaluated: int | None, deleted: list[int], deleted_unevaluated: list[int]
) -> None:
    """Keeps the newest max_to_keep, multiples of keep_every_n_steps, and up to max_unevaluated of the oldest
    steps after last_evaluated; reports which deleted steps the evaluator had not reached."""
    shuffled = STEPS[::-1]  # input order does not matter
    assert policy.to_delete(shuffled, last_evaluated) == (deleted, deleted_unevaluated)


def test_retention_never_deletes_the_newest() -> None:
    """Whatever the options and the evaluator's progress, the newest checkpoint survives (train.py resumes from it)."""
    steps = [10, 20, 30, 35, 40, 60, 80]
    for keep, every, unevaluated, last in itertools.product(
        [1, 2, 5], [0, 3, 20], [0, 1, 4], [None, -1, 10, 35, 80, 1000]
    ):
        delete, delete_unevaluated = RetentionPolicy(keep, every, unevaluated).to_delete(steps, last)
        assert max(steps) not in delete
        assert len(steps) - len(delete) >= min(keep, len(steps))
        assert set(delete_unevaluated) <= set(delete)


def test_apply_retention_deletes_the_files(tmp_path: Path) -> None:
    """apply_retention unlinks the checkpoints the policy lets go, and touches no other file."""
    train_dir = TrainDir(tmp_path)
    for step in (100, 200, 300, 400, 500):
        _save_tiny(train_dir, step)
    _touch(train_dir.checkpoints, "notes.txt", ".ckpt-000000600.pt.tmp")
    deleted = apply_retention(train_dir.checkpoints, RetentionPolicy(2, keep_every_n_steps=200), None)
    assert deleted == [100, 300]
    assert sorted(os.listdir(train_dir.checkpoints)) == sorted(
        [".ckpt-000000600.pt.tmp", "notes.txt", RETIRED_NOTES, *map(checkpoint_name, (200, 400, 500))]
    )
    noted = read_records(train_dir.retired)  # no evaluator yet: each retired step is noted for the one to come
    assert [(r["step"], r["status"]) for r in noted] == [(100, "skipped"), (300, "skipped")]
    assert "retired by train.py before any evaluator joined (checkpoint.max_to_keep=2)" in noted[0]["reason"]


@pytest.mark.parametrize(
    ("every_steps", "due_steps"),
    [(100, [100, 200, 1000]), (1, [1, 2, 3, 99, 100, 101, 150, 200, 1000]), (0, [])],
)
def test_periodic_saver_due_by_steps(every_steps: int, due_steps: list[int]) -> None:
    """With every_secs=0, a save is due exactly at multiples of every_steps (never when it is 0)."""
    policy = save_policy.from_options(CheckpointConfig(every_steps=every_steps, every_secs=0), ALONE)
    candidates = [1, 2, 3, 99, 100, 101, 150, 200, 1000]
    assert [s for s in candidates if policy.due(s)] == due_steps


def test_periodic_saver_due_by_time() -> None:
    """With every_secs set, a save becomes due once that much time has passed since the last one."""
    policy = save_policy.EverySeconds(60, ALONE)
    assert not policy.due(1)
    policy.since -= 61
    assert policy.due(1)


def checkpointer(train_dir: TrainDir, options: CheckpointConfig) -> Checkpointer:
    """train.py's checkpointer alone, without an evaluator to wait for: saves when told to."""
    alone = Distributed.alone()
    ledger = LedgerReader(train_dir, alone, keep_results=options.keep_best > 0)
    retirer = Retirer(train_dir, RetentionPolicy.from_options(options), ledger)
    guard = NonFiniteGuard("stop", torch.device("cpu"), check_grad_norm=False, group=alone, newest_checkpoint=0)
    when = save_policy.from_options(options, ALONE)
    return Checkpointer(when, CheckpointWriter(train_dir, options, alone), retirer, guard, last_step=MAX_STEP)


@pytest.mark.parametrize("async_save", [True, False])
def test_periodic_saver_keeps_what_the_evaluator_has_not_reached(tmp_path: Path, async_save: bool) -> None:
    """Checkpointer.save reads the evaluator's ledger and protects the oldest unevaluated steps."""
    train_dir = TrainDir(tmp_path)
    ledger = Ledger(train_dir.results)
    ledger.append(EvalResult(step=100, file="checkpoints/ckpt-000000100.pt", status="ok", wall_time=0, seconds=0))
    options = CheckpointConfig(every_steps=100, max_to_keep=1, max_unevaluated=1, async_save=async_save)
    saver = checkpointer(train_dir, options)
    for step in (100, 200, 300, 400):
        saver.save(step, {"model": {"w": torch.zeros(1)}})
    saver.finish(400, dict)
    assert saver.writer.newest == 400
    assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [200, 400]


@pytest.mark.parametrize("async_save", [True, False])
def test_periodic_saver_logs_each_save_when_it_commits(
    tmp_path: Path, async_save: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """`saved ckpt-N` is logged once N is committed, before the loop goes on to the next save (which is
    when an evaluator may already have reported step N), not at that next save."""
    train_dir = TrainDir(tmp_path)
    saver = checkpointer(train_dir, CheckpointConfig(every_steps=100, async_save=async_save))
    with caplog.at_level(logging.INFO, logger="shared.training.checkpoint_writer"):
        saver.save(100, {"model": {"w": torch.zeros(1)}})
        if saver.writer.in_flight is not None:
            saver.writer.in_flight.future.result()  # the writing thread committed it; the loop has not looked yet
        assert (train_dir.checkpoints / checkpoint_name(100)).exists()
        assert f"saved {checkpoint_name(100)} (the loop blocked" in caplog.text
        saver.finish(100, dict)
    assert caplog.text.count(f"saved {checkpoint_name(100)}") == 1


def test_the_saver_commits_the_weights_beside_each_checkpoint_and_retention_removes_them_with_it(
    tmp_path: Path,
) -> None:
    """train.py's saves put the weights alone beside each checkpoint; retiring a checkpoint retires them too."""
    train_dir = TrainDir(tmp_path)
    saver = checkpointer(train_dir, CheckpointConfig(every_steps=100, max_to_keep=2))
    model = nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 64)).sum().backward()
    optimizer.step()
    for step in (100, 200, 300):
        saver.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    saver.finish(300, dict)
    names = [checkpoint_name(s) for s in (200, 300)] + [weights_name(s) for s in (200, 300)] + [RETIRED_NOTES]
    assert sorted(os.listdir(train_dir.checkpoints)) == sorted(names)
    weights = load(train_dir.checkpoints / weights_name(300))
    assert set(weights) == {"format_version", "step", "model"} and weights["step"] == 300
    # AdamW keeps two tensors per weight: the weights file is about a third of the checkpoint
    assert (train_dir.checkpoints / weights_name(300)).stat().st_size < train_dir.checkpoint(300).stat().st_size / 2


def test_the_evaluator_reads_the_weights_file_not_the_checkpoint(tmp_path: Path) -> None:
    """With the weights file there, the checkpoint itself is never read: a truncated one still loads. Without
    it, or with it damaged, the checkpoint is read, and decides."""
    train_dir = TrainDir(tmp_path)
    model = nn.Linear(4, 3)
    path = save(
        train_dir, 5, {"model": model.state_dict(), "optimizer": {"big": torch.zeros(1000)}}, weights_beside=True
    )
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    state = load_weights(path)
    assert state["step"] == 5 and torch.equal(state["model"]["weight"], model.weight)
    beside = train_dir.checkpoints / weights_name(5)
    beside.write_bytes(beside.read_bytes()[:40])  # a damaged weights file: the checkpoint decides
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(path)
    beside.unlink()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(path)
    intact = save(train_dir, 6, {"model": model.state_dict()})  # no weights file: the checkpoint is read
    assert load_weights(intact)["step"] == 6


def test_a_weights_file_without_its_checkpoint_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """A writer killed between the weights file and its checkpoint leaves the first alone: stale, removed."""
    folder = tmp_path / "checkpoints"
    _touch(folder, weights_name(100), checkpoint_name(100), weights_name(200), ".ckpt-000000300.weights.pt.tmp")
    removed = remove_stale_temps(folder)
    assert sorted(p.name for p in removed) == [".ckpt-000000300.weights.pt.tmp", weights_name(200)]
    assert sorted(os.listdir(folder)) == [checkpoint_name(100), weights_name(100)]
