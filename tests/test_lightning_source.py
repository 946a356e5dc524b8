"""`source.format: lightning` on a real Lightning Trainer run (ModelCheckpoint every 5 steps, keeping all), made
once for the module with the eval.py daemon beside it (tests/foreign_runs.py): every checkpoint recorded once,
the daemon SIGKILLed mid-run and started again, a growing `.ckpt` never evaluated until whole, ad hoc equal to
the daemon's record. Then the source itself on those files: listed by their global_step, complete ones only (a
real file cut at any length is not), the model's weights loaded strictly with the attribute prefix stripped, the
program's own objects in the file read as inert stand-ins, code in it never run."""

from __future__ import annotations

import io
import pickle
import shutil
import statistics
import subprocess
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from shared.checkpoints.sources.files import zip_is_complete
from shared.checkpoints.sources.lightning import MAX_INDEX_BYTES, LightningCheckpoints
from shared.errors import CheckpointError
from tests.conftest import process_starter
from tests.foreign_runs import DaemonBeside, assert_each_recorded_once, digits, run_beside_the_daemon
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

STEPS, EVERY = 30, 5
SOURCE = LightningCheckpoints("model.")


def plant_a_growing_file(checkpoints: Path, complete: Path, step: int) -> tuple[Path, Callable[[], None]]:
    """A real checkpoint saved again as step `step`, half written, as a copy into place leaves it while it grows."""
    state = torch.load(complete, weights_only=False)  # the test's own file
    state["global_step"] = step
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data, path = buffer.getvalue(), checkpoints / f"epoch=9-step={step}.ckpt"
    path.write_bytes(data[: len(data) // 2])

    def finish() -> None:
        with open(path, "ab") as f:
            f.write(data[len(data) // 2 :])

    return path, finish


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[DaemonBeside]:
    folder = tmp_path_factory.mktemp("lightning")
    with process_starter(folder, warm_scripts) as start:
        yield run_beside_the_daemon(start, folder, {"format": "lightning"}, STEPS, EVERY, plant_a_growing_file)


def test_the_daemon_beside_a_lightning_trainer_records_each_checkpoint_once(run: DaemonBeside) -> None:
    lags = assert_each_recorded_once(run, STEPS, EVERY)
    print(f"lightning: completion to record, median {statistics.median(lags):.2f}s of {lags}")


def trusted_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict as Lightning itself reads it (a full unpickle: these files are the test's own)."""
    return torch.load(path, weights_only=False)["state_dict"]


def test_checkpoints_listed_by_global_step_load_strictly_without_the_prefix(run: DaemonBeside, tmp_path: Path) -> None:
    model = digits().build_model()
    found = SOURCE.list(run.checkpoints)
    assert [c.step for c in found] == [*range(EVERY, STEPS + 1, EVERY), run.planted]
    for checkpoint in found[:2]:
        assert SOURCE.restore(checkpoint.path, model) == checkpoint.step
        expected = trusted_weights(checkpoint.path)
        assert all(torch.equal(value, expected[f"model.{name}"]) for name, value in model.state_dict().items())
    # The step is the file's global_step, whatever the name; last.ckpt (a copy of another step) is not listed.
    for name in ("last.ckpt", f"epoch=0-step={STEPS + 1}.ckpt"):
        shutil.copy(found[0].path, tmp_path / name)
    assert [(c.step, c.path.name) for c in SOURCE.list(tmp_path)] == [(EVERY, f"epoch=0-step={STEPS + 1}.ckpt")]
    with pytest.raises(CheckpointError, match=r"source.prefix 'net\.' .*'model\.0\.weight'"):
        LightningCheckpoints("net.").restore(found[0].path, model)


def test_a_file_cut_at_any_length_is_incomplete_and_ad_hoc_it_is_refused(run: DaemonBeside, tmp_path: Path) -> None:
    """A real checkpoint cut at every length a copy in progress may have (each 1% and the last 100 bytes)."""
    checkpoint = SOURCE.list(run.checkpoints)[-2]
    data, growing = checkpoint.path.read_bytes(), tmp_path / checkpoint.path.name
    for cut in sorted({*range(0, len(data), len(data) // 100), *range(len(data) - 100, len(data))}):
        growing.write_bytes(data[:cut])
        assert SOURCE.step_of(growing) is None, f"cut at {cut} of {len(data)} bytes counted as complete"
    assert not zip_is_complete(growing)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        SOURCE.restore(growing, digits().build_model())
    growing.write_bytes(data)
    assert SOURCE.step_of(growing) == checkpoint.step


def test_an_inflating_index_is_not_read_to_find_the_step(run: DaemonBeside, tmp_path: Path) -> None:
    """A complete file whose data.pkl unpacks to more than MAX_INDEX_BYTES (deflated zeros after the pickle): its
    step is its name's, unread; evaluated, the file's bound refuses it from the central directory."""
    real, inflating = SOURCE.list(run.checkpoints)[0].path, tmp_path / "epoch=0-step=77.ckpt"
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(inflating, "w") as out:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename.endswith("data.pkl"):
                out.writestr(entry.filename, data + bytes(MAX_INDEX_BYTES + 1), zipfile.ZIP_DEFLATED)
            else:
                out.writestr(entry, data)
    assert inflating.stat().st_size < 2 * real.stat().st_size
    assert SOURCE.step_of(inflating) == 77
    with pytest.raises(CheckpointError, match="unpacks to"):
        SOURCE.restore(inflating, digits().build_model())


def test_the_programs_own_objects_load_as_stand_ins_and_no_code_in_the_file_runs(
    run: DaemonBeside, tmp_path: Path
) -> None:
    path = SOURCE.list(run.checkpoints)[0].path
    # Lightning's own file is refused by weights_only=True alone: its hyper-parameters hold a Namespace and a Path.
    with pytest.raises(pickle.UnpicklingError, match=r"argparse\.Namespace|PosixPath"):
        torch.load(path, weights_only=True)
    state = torch.load(path, weights_only=False)
    marker = tmp_path / "ran"
    state["hyper_parameters"]["payload"] = RunsSubprocess(marker)
    planted = tmp_path / f"epoch=0-step={state['global_step']}.ckpt"
    torch.save(state, planted)
    assert SOURCE.restore(planted, digits().build_model()) == state["global_step"]
    assert not marker.exists()
    # What torch's weights-only unpickler cannot fill: a dict type of the program's own, as one line.
    state["hyper_parameters"]["settings"] = Settings(lr=0.1)
    torch.save(state, planted)
    with pytest.raises(CheckpointError, match=r"a dict or list type of the training program's own.*Settings"):
        SOURCE.restore(planted, digits().build_model())


def test_the_watchers_reads_and_the_evaluations_loads_at_once_never_refuse_a_file(run: DaemonBeside) -> None:
    """The daemon's watcher thread asks a file's step while its main thread loads another: both read with stand-ins
    in torch's one allowlist per process (a restarted daemon in CI once recorded a good file failed, "Unsupported
    global: argparse.Namespace"). Two real threads, each reading 60 times."""
    first, second = (c.path for c in SOURCE.list(run.checkpoints)[:2])
    errors: list[BaseException] = []

    def reads(read: Callable[[], object]) -> None:
        try:
            for _ in range(60):
                read()
        except BaseException as err:  # to the test's thread, which asserts none came
            errors.append(err)

    watcher = threading.Thread(target=reads, args=(lambda: SOURCE.step_of(first),))
    watcher.start()
    reads(lambda: SOURCE.restore(second, digits().build_model()))
    watcher.join()
    assert not errors, errors[0]


class Settings(dict):
    """A program's own dict type (an AttributeDict, an EasyDict)."""


class RunsSubprocess:
    """A payload of a module torch does not block (subprocess): it becomes an inert stand-in, never a call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (subprocess.call, (["touch", str(self.marker)],))
