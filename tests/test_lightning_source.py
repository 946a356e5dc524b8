"""The `lightning` checkpoint source on the checkpoints of a real Lightning Trainer (ModelCheckpoint every 5
steps, keeping all), made once for the module: listed by their global_step, complete ones only (a real
file cut short at any length is not), the model's weights loaded strictly with the attribute prefix stripped,
the program's own objects in the file read as inert stand-ins, code in the file never run."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from shared.checkpoints.sources.lightning import LightningCheckpoints, zip_is_complete
from shared.errors import CheckpointError
from tests.foreign_runs import digits, run_to_end

STEPS, EVERY = 20, 5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_to_end("lightning", tmp_path_factory.mktemp("lightning"), STEPS, EVERY)


def trusted_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict as Lightning itself reads it (a full unpickle: these files are the test's own)."""
    return torch.load(path, weights_only=False)["state_dict"]


def test_checkpoints_are_listed_by_global_step_and_load_strictly_without_the_prefix(run: Path, tmp_path: Path) -> None:
    source, model = LightningCheckpoints(), digits().build_model()
    found = source.list(run)
    assert [c.step for c in found] == list(range(EVERY, STEPS + 1, EVERY))
    for checkpoint in found:
        assert source.restore(checkpoint.path, model) == checkpoint.step
        expected = trusted_weights(checkpoint.path)
        assert all(torch.equal(value, expected[f"model.{name}"]) for name, value in model.state_dict().items())
    # The step is the file's: a name without one, and last.ckpt (a copy of another step), change nothing.
    shutil.copy(found[0].path, tmp_path / "renamed.ckpt")
    shutil.copy(found[1].path, tmp_path / "last.ckpt")
    assert [(c.step, c.path.name) for c in source.list(tmp_path)] == [(EVERY, "renamed.ckpt")]
    # Weights under another attribute are named in the one line.
    with pytest.raises(CheckpointError, match=r"source.prefix 'net\.' .*'model\.0\.weight'"):
        LightningCheckpoints(prefix="net.").restore(found[0].path, model)


def test_a_growing_file_is_never_listed_and_ad_hoc_it_is_refused(run: Path, tmp_path: Path) -> None:
    """A real checkpoint cut at every length a copy in progress may have (each 1% and the last 100 bytes):
    not listed; the same bytes completed are."""
    source, checkpoint = LightningCheckpoints(), LightningCheckpoints().list(run)[-1]
    data, growing = checkpoint.path.read_bytes(), tmp_path / checkpoint.path.name
    cuts = sorted({*range(0, len(data), len(data) // 100), *range(len(data) - 100, len(data))})
    for cut in cuts:
        growing.write_bytes(data[:cut])
        assert source.step_of(growing) is None, f"cut at {cut} of {len(data)} bytes was listed"
    assert not zip_is_complete(growing)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        source.restore(growing, digits().build_model())
    growing.write_bytes(data)
    assert source.step_of(growing) == checkpoint.step


def test_the_programs_own_objects_load_as_stand_ins_and_no_code_in_the_file_runs(run: Path, tmp_path: Path) -> None:
    path = LightningCheckpoints().list(run)[0].path
    # Lightning's own file is refused by weights_only=True alone: its hyper-parameters hold a Namespace and a Path.
    with pytest.raises(pickle.UnpicklingError, match=r"argparse\.Namespace|PosixPath"):
        torch.load(path, weights_only=True)
    state = torch.load(path, weights_only=False)
    marker = tmp_path / "ran"
    state["hyper_parameters"]["payload"] = RunsSubprocess(marker)
    planted = tmp_path / "epoch=0-step=5.ckpt"
    torch.save(state, planted)
    model = digits().build_model()
    assert LightningCheckpoints().restore(planted, model) == state["global_step"]
    assert not marker.exists()


class RunsSubprocess:
    """A payload of a module torch does not block (subprocess): it becomes an inert stand-in, never a call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (subprocess.call, (["touch", str(self.marker)],))
