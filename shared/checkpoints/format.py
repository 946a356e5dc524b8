"""What a checkpoint holds, and loading one with every check a reader needs before it trusts it.

Contents (`format_version` 1) are tensors and plain values only, so `torch.load(weights_only=True)` reads
them and nothing else; a file that asks to import anything (the way a pickle runs code) is refused before
anything runs. Loading returns the state or raises CheckpointError with the reason for one log line; a
sharded checkpoint (FSDP folder) is read through shared.checkpoints.sharded, imported only where a folder
is handled: it imports torch.distributed.checkpoint, which adds about half a second to every start.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import stat
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from shared.errors import CheckpointError
from shared.protocol.layout import checkpoint_step, weights_name

FORMAT_VERSION = 1

T = TypeVar("T")

# torch's allowlist for weights-only loads is one per process, and safe_globals() sets it and restores it on exit:
# two threads reading at once (the watcher asking a foreign file's step, the evaluation loading one) would each
# see and then undo the other's stand-ins, and a file would be refused for a global it was given a stand-in for.
_ALLOWLIST = threading.Lock()

log = logging.getLogger(__name__)


def stamped(step: int, state: dict[str, Any]) -> dict[str, Any]:
    """`state` as a checkpoint of `step` stores it: with the format version and the step it holds."""
    return {"format_version": FORMAT_VERSION, "step": step, **state}


# What a checkpoint may unpack to beyond its weights: an optimizer state of at most two tensors per weight
# (Adam's moments) and a little for the rest (schedule, data position, RNG states of every device).
OPTIMIZER_STATES_PER_WEIGHT = 2
OTHER_STATE_BYTES = 16 << 20


def unpacked_size_bound(model: nn.Module, with_optimizer: bool = True) -> int:
    """The most bytes a checkpoint of `model` can hold unpacked (with its optimizer's state, or without
    when only the weights are read): a file that unpacks to more is not loaded (a zip bomb)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights * (1 + (OPTIMIZER_STATES_PER_WEIGHT if with_optimizer else 0)) + OTHER_STATE_BYTES


def load(
    path: Path,
    map_location: str | torch.device = "cpu",
    *,
    max_bytes: int | None = None,
    within: Path | None = None,
) -> dict[str, Any]:
    """The checkpoint's state, or CheckpointError saying why it cannot be used.

    FileNotFoundError passes through: the caller decides what a vanished file means; so does an OSError
    of this process (PROCESS_ERRNOS), while one of the file's (EACCES, EIO, ESTALE) is a CheckpointError
    naming the file and the errno. A sharded checkpoint (a folder) gives its full weights and plain
    state, without the optimizer state. With
    `max_bytes`, a file that would unpack to more is refused before anything is read (its entries may be
    compressed: a few MB can inflate to GBs); with `within`, a checkpoint that resolves outside that
    folder (a planted symlink) is refused unread.
    """
    return guarded(path, within, lambda: _load(path, map_location, max_bytes))


def guarded(path: Path, within: Path | None, read: Callable[[], T]) -> T:
    """`read()` of the checkpoint at `path`, refused unread when it resolves outside `within`; OSErrors as
    `load` says (for every reader of a checkpoint, whatever its format)."""
    if within is not None and not (resolved := Path(path).resolve()).is_relative_to(within.resolve()):
        raise CheckpointError(f"it resolves to {resolved}, outside {within} (a symbolic link?); not read")
    try:
        return read()
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno in PROCESS_ERRNOS:  # this process's trouble, not the file's: a restart retries it
            raise
        raise CheckpointError(_unreadable_reason(path, err)) from None


# OSErrors that say nothing about the file read (out of descriptors or memory, interrupted): they stop the
# evaluator, which a restart retries, rather than fail the checkpoint for good.
PROCESS_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EINTR, errno.EAGAIN})
# What the file system says of a file it cannot give back (modes, a failing disk, a stale NFS handle); torch's
# reader raises other OSErrors (EINVAL from a seek past the end) on a file cut short: those are corrupt files.
UNREADABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ENXIO, errno.ENODEV})


def _unreadable_reason(path: Path, err: OSError) -> str:
    """An unreadable file (EACCES, EIO, ESTALE, ...) as a failed record's reason: the file, the errno, the fix."""
    name = errno.errorcode.get(err.errno, "?") if err.errno else "?"
    file = os.fsdecode(err.filename) if err.filename else str(path)
    return f"cannot read {file}: {name} ({err.strerror or err}); fix the file's permissions or its mount"


def _load(path: Path, map_location: str | torch.device, max_bytes: int | None) -> dict[str, Any]:
    if os.path.isdir(path):
        from shared.checkpoints import sharded

        return checked(sharded.load_for_eval(Path(path)))
    return checked(read_torch_file(path, map_location, max_bytes))


def read_torch_file(
    path: Path,
    map_location: str | torch.device = "cpu",
    max_bytes: int | None = None,
    *,
    foreign: bool = False,
    mmap: bool = False,
) -> Any:
    """What a `torch.save` file holds, read with `weights_only=True`, or CheckpointError saying why not (OSErrors
    pass through: see `guarded`). Another trainer's file (`foreign`) may hold objects of its own beside the
    tensors (Lightning's hyper-parameters: an argparse.Namespace, a Path, a config class): each is read as an
    empty stand-in (`Opaque`) in torch's own weights-only unpickler, so the tensors and plain values load and
    nothing the file names is imported or run. With `mmap`, the tensors' bytes are not read until used: for a
    file whose plain values alone are wanted."""
    info = os.stat(path)  # a missing file's FileNotFoundError passes through
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the reader for good, a device never end
        raise CheckpointError("not a regular file (a FIFO or a device?); not read")
    if info.st_size == 0:
        raise CheckpointError("empty file (0 bytes)")
    if max_bytes is not None:
        check_unpacked_size(path, max_bytes)
    try:
        with _ALLOWLIST, torch.serialization.safe_globals(_stand_ins(path) if foreign else []):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_reason(err)) from None
    except Exception as err:  # corrupt bytes surface as many exception types (KeyError, struct.error, ...)
        passed_on = {errno.ENOENT, *PROCESS_ERRNOS, *UNREADABLE_ERRNOS}
        if isinstance(err, OSError) and err.errno in passed_on:
            raise
        raise CheckpointError(
            f"not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {first_line(err)}"
        ) from None


class Opaque:
    """Stands in for an object of another program's making in a foreign checkpoint: built from anything,
    it keeps nothing and does nothing, so reading it runs none of that program's code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    """A stand-in class, named as the original (so a refusal names it), for each global the file names that
    torch's weights-only unpickler does not allow. Found by torch from the pickle's opcodes, without running it;
    a module torch blocks (os, sys) stays refused."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch zip, or cut short: torch.load says why
        return []
    return [(type(name, (Opaque,), {}), name) for name in names]


def check_unpacked_size(path: Path, max_bytes: int) -> None:
    """Refuse a file whose zip entries unpack to more than `max_bytes`, from its central directory alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"not a readable checkpoint (truncated or corrupt?): {err}") from None
    if unpacked > max_bytes:
        raise CheckpointError(
            f"it unpacks to {unpacked / 2**20:.1f} MiB, more than a checkpoint of this model holds "
            f"({max_bytes / 2**20:.1f} MiB at most); not loaded (a compressed file that inflates?)"
        )


def load_weights(path: Path, model: nn.Module | None = None, *, within: Path | None = None) -> dict[str, Any]:
    """What an evaluator needs of the checkpoint at `path` (its step and weights; other entries may be
    missing): read from the weights file beside a checkpoint file when there is one, a third of the bytes
    of an AdamW checkpoint, else from the checkpoint itself, which also decides when that file is unusable.
    With `model`, each file is bounded by what it can hold of that model (unpacked_size_bound); `within`
    as for load. An unusable weights file is warned about only when the checkpoint serves instead: when
    both fail (both unreadable, say), the checkpoint's reason is the one line."""
    step, unusable = checkpoint_step(path), None
    if step is not None and not os.path.isdir(path):
        beside = Path(path).with_name(weights_name(step))
        bound = unpacked_size_bound(model, with_optimizer=False) if model is not None else None
        try:
            return load(beside, max_bytes=bound, within=within)
        except FileNotFoundError:  # none written (an older train.py, a copy by hand), or retired meanwhile
            pass
        except CheckpointError as err:
            unusable = f"{beside.name}: {err}; read the weights from {Path(path).name} instead"
    bound = unpacked_size_bound(model) if model is not None else None
    state = load(path, max_bytes=bound, within=within)
    if unusable:
        log.warning("%s", unusable)
    return state


def checked(state: Any) -> dict[str, Any]:
    """`state` if it has what every trainval checkpoint has, else CheckpointError saying what is wrong."""
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError("not a trainval checkpoint: no 'model' and 'step' entries")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise CheckpointError(f"its step {state['step']!r} is not a non-negative integer")
    version = state.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError("not a trainval checkpoint: no integer 'format_version'")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"format version {version!r} is newer than this trainval reads ({FORMAT_VERSION}); upgrade trainval"
        )
    return state


def load_for_resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, sharded_training: bool
) -> dict[str, Any]:
    """What TrainState.load_state_dict takes. A sharded checkpoint (folder) restores the model's and the
    optimizer's shards here, resharded to this run's world size; a file is read whole by every rank, on
    the CPU: the RNG states must stay there, and loading the weights copies them to the device."""
    if os.path.isdir(path) != sharded_training:
        written, now = ("fsdp", "ddp") if os.path.isdir(path) else ("ddp", "fsdp")
        raise CheckpointError(f"it was written with train.strategy={written}, not {now}; resume with {written}")
    if sharded_training:
        from shared.checkpoints import sharded

        return checked(sharded.load_into(Path(path), model, optimizer) | {"model": None})
    return load(path, map_location="cpu")


def restore_model(model: nn.Module, state: dict[str, Any]) -> None:
    """Load weights strictly, refusing wrong shapes, missing or extra keys, and non-finite values."""
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError("its 'model' entry is not a state dict")
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    misfits = [
        f"{name}: {tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in weights and (not torch.is_tensor(weights[name]) or weights[name].shape != tensor.shape)
    ]
    problems = misfits[:3]
    if unexpected:
        problems.insert(0, f"unexpected keys {_brief(unexpected)}")
    if missing:
        problems.insert(0, f"missing keys {_brief(missing)}")
    if problems:
        raise CheckpointError("does not fit this model (another model config?): " + "; ".join(problems))
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weight {name!r} holds NaN or Inf values")
    model.load_state_dict(weights, strict=True)


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The substance of torch's weights-only refusal, without its advice to load with weights_only=False."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = " ".join(line for line in lines if not line.startswith(boilerplate)) or "unpickling failed"
    if "GLOBAL" in detail:  # the file asks to import something: the way pickles run code
        return f"refused to load: it holds objects other than tensors and plain values ({detail})"
    if detail.startswith("Can only"):  # a stand-in (Opaque) filled item by item: the program's own dict or list
        return f"refused to load: it holds a dict or list type of the training program's own, not read ({detail})"
    return f"not a readable checkpoint (truncated or corrupt?): {detail}"


def first_line(err: BaseException) -> str:
    """An exception's message, first line only: for one log line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _brief(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."
