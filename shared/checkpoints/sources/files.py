"""`files`: one weights file per checkpoint, named by a pattern with `{step}` (`model_{step}.safetensors`,
`ckpt/step-{step}.pt`): whatever a hand-written loop saves.

Such a loop may write the file in place, so a name is not enough: a candidate is complete once its own
index is whole. A safetensors file is complete when its header (8 bytes of length, then JSON) parses and the
file holds every byte its tensors' offsets reach; a torch file (`.pt`, `.pth`, `.bin`: a zip) when its
central directory, which is written last, opens. A file that stays incomplete is never read.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from shared.checkpoints.format import guarded, read_torch_file, unpacked_size_bound
from shared.checkpoints.sources.base import FORMAT, CheckpointSource, SourceSection, restore_fitted
from shared.errors import CheckpointError, ConfigError

END_RECORD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record, 22 bytes, last
ZIP64_LOCATOR = struct.Struct("<4sLQL")  # right before it: where the zip64 end record is (torch writes both)
ZIP64_RECORD = struct.Struct("<4sQ2H2L4Q")  # the zip64 end record: the central directory's size and offset


def zip_is_complete(path: Path) -> bool:
    """Whether the file ends with a zip's end records (no comment: torch writes none) placed right after the
    central directory they point to: a file still being written (copied into place) does not. Reads the
    file's last 98 bytes, no more."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < ZIP64_RECORD.size + ZIP64_LOCATOR.size + END_RECORD.size:
            return False
        f.seek(size - ZIP64_RECORD.size - ZIP64_LOCATOR.size - END_RECORD.size)
        tail = f.read()
    end = END_RECORD.unpack_from(tail, len(tail) - END_RECORD.size)
    if end[0] != b"PK\x05\x06" or end[-1] != 0:
        return False
    locator = ZIP64_LOCATOR.unpack_from(tail, ZIP64_RECORD.size)
    if locator[0] != b"PK\x06\x07":  # a plain zip: its directory ends where the end record starts
        return end[6] + end[5] == size - END_RECORD.size
    record = ZIP64_RECORD.unpack_from(tail)
    record_at = size - len(tail)
    return record[0] == b"PK\x06\x06" and locator[2] == record_at and record[-1] + record[-2] == record_at


SAFETENSORS_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header


def safetensors_complete(path: Path) -> bool:
    """Whether the safetensors file at `path` holds its whole header and every tensor byte it announces."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                return True  # not growing but broken: complete as far as it goes; loading says what is wrong
            header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"), default=0)
            return os.fstat(f.fileno()).st_size >= 8 + length + end
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False  # a header cut short: still being written


def file_complete(path: Path) -> bool:
    """A weights file's own rule of completeness, by its suffix (safetensors, or else a torch zip)."""
    if path.name.endswith(SAFETENSORS_SUFFIX):
        return safetensors_complete(path)
    try:
        return zip_is_complete(path)
    except OSError:
        return False


def read_weights_file(path: Path, model: nn.Module, within: Path | None) -> dict[str, Any]:
    """The tensors of one weights file, safetensors or torch (`weights_only=True`, bounded by what a weights
    file of `model` can hold), never unpickled otherwise."""
    if path.name.endswith(SAFETENSORS_SUFFIX):
        return guarded(path, within, lambda: _read_safetensors(path))
    bound = unpacked_size_bound(model, with_optimizer=False)
    state = guarded(path, within, lambda: read_torch_file(path, max_bytes=bound, foreign=True))
    if isinstance(state, dict):
        for key in ("state_dict", "model"):  # a loop's `{"model": ..., "step": ...}` or Lightning's layout
            if isinstance(state.get(key), dict):
                return state[key]
        return state
    raise CheckpointError(f"holds a {type(state).__name__}, not a state dict")


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    os.stat(path)  # a vanished file is FileNotFoundError, as for every source
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"not a readable safetensors file: {str(err).splitlines()[0]}") from None


class FilesCheckpoints(CheckpointSource):
    def __init__(self, pattern: str) -> None:
        folder, _, name = pattern.rpartition("/")
        self.subfolder = folder
        head, _, tail = name.partition("{step}")
        self.name_re = re.compile(rf"^{re.escape(head)}(\d+){re.escape(tail)}$")

    def folder(self, root: Path) -> Path:
        """The pattern's folder under the run's."""
        return root / self.subfolder if self.subfolder else root

    def step_of(self, path: Path) -> int | None:
        match = self.name_re.match(path.name)
        return int(match.group(1)) if match and file_complete(path) else None

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """The step is the file name's: nothing else in a bare weights file says it."""
        match = self.name_re.match(path.name)
        if match is None:
            raise CheckpointError(f"its name does not match the pattern {self.name_re.pattern}")
        step = int(match.group(1))
        restore_fitted(read_weights_file(path, model, within), model)
        return step


class FilesSource(SourceSection):
    """source.format files: a weights file per checkpoint, found by a name pattern."""

    format: Literal["files"] = Field(description=FORMAT)
    pattern: str = Field(
        description="the file names, relative to --train-dir, with {step} once: model_{step}.safetensors, "
        "ckpt/{step}.pt"
    )

    @field_validator("pattern")
    @classmethod
    def _one_step(cls, pattern: str) -> str:
        name = pattern.rpartition("/")[2]
        if pattern.count("{step}") != 1 or "{step}" not in name or pattern.startswith("/") or ".." in pattern:
            raise ConfigError(
                f"source.pattern: a file name relative to --train-dir with {{step}} once in its name, got {pattern!r}"
            )
        return pattern

    def build(self) -> FilesCheckpoints:
        return FilesCheckpoints(self.pattern)
