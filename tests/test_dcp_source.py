"""`source.format: dcp` on the folders of a real two-process gloo loop that saves with torch.distributed.checkpoint
every 4 steps (torchtitan's `step-<N>/`), made once for the module with the eval.py daemon beside it
(tests/foreign_runs.py): every checkpoint recorded once, the daemon SIGKILLed mid-run and started again, a
folder without `.metadata` never evaluated until DCP's last write, ad hoc equal to the daemon's record. Then
the source on those folders: the weights read in one process with no process group, equal to what DCP's own
converter reads; OLMo-core's nested layout."""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from shared.checkpoints.sources import resolve_source
from shared.checkpoints.sources.dcp import DcpCheckpoints
from shared.errors import CheckpointError, ConfigError
from shared.protocol.layout import METADATA
from tests.conftest import process_starter
from tests.foreign_runs import DaemonBeside, assert_each_recorded_once, digits, run_beside_the_daemon
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

STEPS, EVERY = 24, 4
SOURCE = DcpCheckpoints("step-{step}", "model.")


def plant_a_folder_being_written(checkpoints: Path, complete: Path, step: int) -> tuple[Path, Callable[[], None]]:
    """A real step folder as DCP leaves it while the ranks write: every data file, no `.metadata` yet; DCP's last
    write (`.metadata.tmp` renamed into place) completes it."""
    path = checkpoints / f"step-{step}"
    shutil.copytree(complete, path, ignore=shutil.ignore_patterns(METADATA))

    def finish() -> None:
        shutil.copy(complete / METADATA, path / f"{METADATA}.tmp")
        os.replace(path / f"{METADATA}.tmp", path / METADATA)

    return path, finish


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[DaemonBeside]:
    folder = tmp_path_factory.mktemp("dcp")
    source = {"format": "dcp", "pattern": "step-{step}"}
    with process_starter(folder, warm_scripts) as start:
        yield run_beside_the_daemon(start, folder, source, STEPS, EVERY, plant_a_folder_being_written)


def test_the_daemon_beside_a_two_rank_dcp_loop_records_each_checkpoint_once(run: DaemonBeside) -> None:
    lags = assert_each_recorded_once(run, STEPS, EVERY)
    print(f"dcp: completion to record, median {statistics.median(lags):.2f}s of {lags}")


def converted_weights(folder: Path, into: Path) -> dict[str, torch.Tensor]:
    """The folder's model weights as DCP's own converter writes them (a full unpickle: the test's own files)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, into)
    return torch.load(into, weights_only=False)["model"]


def test_the_weights_load_in_one_process_as_dcps_converter_reads_them(run: DaemonBeside, tmp_path: Path) -> None:
    model, found = digits().build_model(), SOURCE.list(run.checkpoints)
    assert [c.step for c in found] == [*range(EVERY, STEPS + 1, EVERY), run.planted]
    for checkpoint in found[:2]:
        assert SOURCE.restore(checkpoint.path, model) == checkpoint.step
        expected = converted_weights(checkpoint.path, tmp_path / f"{checkpoint.step}.pt")
        assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    assert not torch.distributed.is_initialized()
    with pytest.raises(CheckpointError, match=r"source.prefix 'net\.' .*'model\."):
        DcpCheckpoints("step-{step}", "net.").restore(found[0].path, model)
    writing = tmp_path / "step-5"
    shutil.copytree(found[0].path, writing, ignore=shutil.ignore_patterns(METADATA))
    with pytest.raises(CheckpointError, match=r"not a complete DCP checkpoint: no .*/\.metadata"):
        SOURCE.restore(writing, model)


def test_olmo_cores_nested_layout_is_found_by_its_pattern(run: DaemonBeside, tmp_path: Path) -> None:
    shutil.copytree(run.checkpoints / f"step-{EVERY}", tmp_path / f"step{EVERY}" / "model_and_optim")
    (tmp_path / f"step{EVERY}" / "train").mkdir()
    source = resolve_source({"format": "dcp", "pattern": "step{step}/model_and_optim"}).build()
    assert [c.step for c in source.list(source.folder(tmp_path))] == [EVERY]
    assert source.restore(tmp_path / f"step{EVERY}", digits().build_model()) == EVERY
    with pytest.raises(ConfigError, match=r"source.pattern .*holds `\{step\}` once"):
        resolve_source({"format": "dcp", "pattern": "step-{step}/{step}"}).build()
