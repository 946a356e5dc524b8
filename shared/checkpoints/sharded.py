"""Sharded checkpoints (`train.strategy: fsdp`): one folder per step, written by every rank at once with
torch.distributed.checkpoint (DCP), and read back in a single process with no process group.

    checkpoints/.ckpt-<step:09d>.tmp/   being written: each rank's shards (`__<rank>_0.distcp`), rank 0's
                                        `state.pt`, and DCP's `.metadata`, written last by its coordinator
    checkpoints/ckpt-<step:09d>/        committed: renamed by rank 0 once its save finished (which DCP
                                        completes only after every rank's write) and `.metadata` exists

DCP holds tensors only (weights and optimizer state, resharded on load to any world size); the plain
values (step, optimizer hyper-parameters, schedule, data position, RNG) go in `state.pt`, read with
`weights_only=True`. DCP reads `.metadata` with plain pickle and non-tensor entries with
`torch.load(weights_only=False)`; here `.metadata` goes through an unpickler that builds only DCP's own
metadata classes, and a non-tensor entry is refused, so a checkpoint folder can never run code.
"""

from __future__ import annotations

import io
import os
import pickle
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from shared.errors import CheckpointError
from shared.protocol.files import atomic_file, fsync_dir
from shared.protocol.layout import METADATA, SHARDED_STATE, checkpoint_folder, checkpoint_temp_folder

# Everything a DCP `.metadata` pickle may name: DCP's own metadata classes and the torch values in them.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = name in _DCP_CLASSES.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of DCP's metadata")
        return super().find_class(module, name)


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with `.metadata` unpickled by the restricted unpickler above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / METADATA
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except FileNotFoundError:
            if not path.parent.exists():
                raise
            raise CheckpointError(f"{path} is missing: not a complete sharded checkpoint") from None
        except Exception as err:  # a refusal, or bytes that are no pickle at all
            raise CheckpointError(f"{path}: refused to read it: {err}") from None
        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
            raise CheckpointError(f"{path}: not DCP metadata")
        for info in (metadata.storage_data or {}).values():
            if os.path.basename(str(info.relative_path)) != str(info.relative_path):
                raise CheckpointError(f"{path}: names a data file outside its folder ({info.relative_path!r})")
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnly(DefaultLoadPlanner):
    """Loads tensors; DCP would unpickle a non-tensor entry with weights_only=False, so it is refused."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise CheckpointError(f"entry {read_item.dest_index.fqn!r} is a pickled object; only tensors are read")


def save_async(
    folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any], group: Any
) -> Future:
    """Start writing this rank's shards of step `step` into its temp folder; the future is done once every
    rank's are written and `.metadata` is (then rank 0 calls `commit`). Collective: every rank calls it
    at the same step; `group` is a gloo group of its own, as DCP's writing runs beside training."""
    temp = folder / checkpoint_temp_folder(step)
    weights, optim = get_state_dict(model, optimizer)
    if torch.distributed.get_rank() == 0:
        temp.mkdir(parents=True, exist_ok=True)
        with atomic_file(temp / SHARDED_STATE, temp / f".{SHARDED_STATE}.tmp") as f:
            torch.save({**plain, "optimizer_param_groups": optim["param_groups"]}, f)
    torch.distributed.barrier(group)  # no rank writes into the folder before rank 0 made it
    writer = dcp.FileSystemWriter(temp, sync_files=True, overwrite=False)  # also stages a copy to write from
    return dcp.async_save({"model": weights, "optim": optim["state"]}, storage_writer=writer, process_group=group)


def commit(folder: Path, step: int) -> Path:
    """Rank 0, after `save_async`'s future: rename the complete temp folder to its committed name."""
    temp, final = folder / checkpoint_temp_folder(step), folder / checkpoint_folder(step)
    if not (temp / METADATA).exists():
        raise OSError(f"DCP finished without writing {temp / METADATA}")
    fsync_dir(temp)
    os.replace(temp, final)
    fsync_dir(folder)
    return final


def read_metadata(folder: Path) -> tuple[SafeReader, Metadata]:
    """A reader of the DCP folder and its `.metadata`, unpickled by the restricted unpickler above."""
    if not folder.exists():
        raise FileNotFoundError(folder)
    reader = SafeReader(folder)
    return reader, reader.read_metadata()


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = torch.load(folder / SHARDED_STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        if not folder.exists():
            raise
        raise CheckpointError(f"{folder / SHARDED_STATE} is missing: not a complete sharded checkpoint") from None
    except Exception as err:
        raise CheckpointError(f"{folder / SHARDED_STATE}: not readable: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / SHARDED_STATE}: not a dict of plain values")
    return state


def read_tensors(state: dict[str, Any], reader: SafeReader, folder: Path) -> None:
    """Fill `state`'s tensors from the folder (resharded as they are laid out); a pickled entry is refused."""
    try:
        no_dist = not torch.distributed.is_initialized()  # eval.py: one process, no process group
        dcp.load(state, storage_reader=reader, planner=_TensorsOnly(), no_dist=no_dist)
    except CheckpointError:
        raise
    except Exception as err:  # DCP wraps every rank's failure into one CheckpointException
        if not folder.exists():  # retired by retention meanwhile: the caller decides what that means
            raise FileNotFoundError(folder) from None
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"DCP could not read {folder.name}: {type(err).__name__}: {reason}") from None


def load_for_eval(folder: Path) -> dict[str, Any]:
    """The plain state and full (unsharded) weights, in one process with no process group.

    The tensors to load into are built from the metadata's shapes and dtypes: no model is needed.
    """
    reader, metadata = read_metadata(folder)
    mapping = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    weights: dict[str, torch.Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        path = mapping.get(key, tuple(key.split(".", 1)))
        if not (isinstance(path, tuple) and len(path) == 2 and path[0] == "model"):
            continue
        if isinstance(item, BytesStorageMetadata) or not isinstance(item, TensorStorageMetadata):
            raise CheckpointError(f"weight {path[1]!r} is not a tensor in {folder / METADATA}")
        weights[path[1]] = torch.empty(item.size, dtype=item.properties.dtype)
    read_tensors({"model": weights}, reader, folder)
    return {**_read_state(folder), "model": weights}


def load_into(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Resume: every rank reads its shards of the weights and optimizer state (resharded to this world
    size); returns the plain state (step, schedule, data position, RNG)."""
    reader, _ = read_metadata(folder)
    weights, optim = get_state_dict(model, optimizer)
    shards = {"model": weights, "optim": optim["state"]}
    read_tensors(shards, reader, folder)
    state = _read_state(folder)
    optim = {"state": shards["optim"], "param_groups": state.pop("optimizer_param_groups")}
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=optim)
    return state
