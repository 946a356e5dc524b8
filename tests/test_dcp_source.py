"""The `dcp` checkpoint source on the folders of a real two-process gloo loop that saves with
torch.distributed.checkpoint every 4 steps (torchtitan's `step-<N>/`), made once for the module: complete
folders only (a folder without `.metadata` is not listed, and is refused ad hoc), the model's weights read in
one process with no process group, equal to what DCP's own converter reads; OLMo-core's nested layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shared.checkpoints.sources.dcp import DcpCheckpoints
from shared.errors import CheckpointError, ConfigError
from tests.foreign_runs import digits, run_to_end

STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_to_end("dcp", tmp_path_factory.mktemp("dcp"), STEPS, EVERY)


def converted_weights(folder: Path, into: Path) -> dict[str, torch.Tensor]:
    """The folder's model weights as DCP's own converter writes them (a full unpickle: the test's own files)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, into)
    return torch.load(into, weights_only=False)["model"]


def test_complete_folders_are_listed_and_load_in_one_process(run: Path, tmp_path: Path) -> None:
    source, model = DcpCheckpoints(), digits().build_model()
    found = source.list(run)
    assert [c.step for c in found] == list(range(EVERY, STEPS + 1, EVERY))
    assert not torch.distributed.is_initialized()
    for checkpoint in found:
        assert source.restore(checkpoint.path, model) == checkpoint.step
        expected = converted_weights(checkpoint.path, tmp_path / f"{checkpoint.step}.pt")
        assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"source.prefix 'net\.' .*'model\."):
        DcpCheckpoints(prefix="net.").restore(found[0].path, model)


def test_a_folder_without_its_metadata_is_never_listed_and_ad_hoc_it_is_refused(run: Path, tmp_path: Path) -> None:
    """A real step folder as DCP leaves it while the ranks write: every data file, no `.metadata` yet."""
    source = DcpCheckpoints()
    writing = tmp_path / f"step-{STEPS + EVERY}"
    shutil.copytree(run / f"step-{STEPS}", writing, ignore=shutil.ignore_patterns(".metadata"))
    assert source.list(tmp_path) == [] and source.step_of(writing) is None
    with pytest.raises(CheckpointError, match=r"not a complete DCP checkpoint: no .*/\.metadata"):
        source.restore(writing, digits().build_model())
    shutil.copy(run / f"step-{STEPS}" / ".metadata", writing)
    assert source.step_of(writing) == STEPS + EVERY


def test_olmo_cores_nested_layout_is_found_by_its_pattern(run: Path, tmp_path: Path) -> None:
    shutil.copytree(run / f"step-{EVERY}", tmp_path / f"step{EVERY}" / "model_and_optim")
    (tmp_path / f"step{EVERY}" / "train").mkdir()
    source = DcpCheckpoints(pattern="step{step}/model_and_optim")
    assert [c.step for c in source.list(tmp_path)] == [EVERY]
    assert source.restore(tmp_path / f"step{EVERY}", digits().build_model()) == EVERY
    with pytest.raises(ConfigError, match=r"holds `\{step\}` once"):
        DcpCheckpoints(pattern="checkpoints/step-{step}")
