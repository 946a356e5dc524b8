"""Lightning's checkpoints: the `.ckpt` files `ModelCheckpoint` writes (`epoch=0-step=100.ckpt`, any name).

Lightning 2.6 saves a checkpoint by `torch.save` into memory, then writes the bytes to a temp file of
`tempfile.mkstemp()` (in $TMPDIR) inside an fsspec transaction, which `shutil.move`s it to its name: a
rename when $TMPDIR is on the checkpoints' file system, but a copy under the final name, growing, when it is
not (a container's /tmp, a mounted output folder); Lightning before 2.4 wrote the file in place. So a name
says nothing: a file is complete once it ends with its zip's end-of-central-directory record, which torch's
writer writes last, and whose offsets agree with the file's length (`zip_is_complete`).

The step is the file's `global_step` (the name's `step=` may be absent or formatted away). `last.ckpt`
(`save_last`, rewritten at every save, or a link) repeats another checkpoint's step and is not listed.
The weights are the file's `state_dict`, the LightningModule's attribute prefix (`model.` for
`self.model = ...`) stripped; the file's other entries (hyper-parameters, callbacks' and loops' state) may
hold objects of the training program's own, which are read as empty stand-ins (format.read_torch_file).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from shared.checkpoints.format import guarded, read_torch_file, restore_model, unpacked_size_bound
from shared.checkpoints.sources.base import FORMAT, CheckpointSource, SourceSection
from shared.checkpoints.sources.files import zip_is_complete
from shared.errors import CheckpointError

LAST_RE = re.compile(r"^last(-v\d+)?\.ckpt$")  # ModelCheckpoint.CHECKPOINT_NAME_LAST, and its versions
NAME_STEP_RE = re.compile(r"step=(\d+)")  # the default file name's step, used only when the file is unreadable
# The pickle indexing a checkpoint's tensors (a few hundred bytes per tensor), read whole to find global_step
# before any model bounds the file: one larger than this is not read there (a compressed one may inflate).
MAX_INDEX_BYTES = 64 << 20


class LightningCheckpoints(CheckpointSource):
    """`*.ckpt` files of a ModelCheckpoint folder, complete ones only, by their `global_step`."""

    def __init__(self, prefix: str = "model.") -> None:
        self.prefix = prefix

    def step_of(self, name: str | os.PathLike) -> int | None:
        """The step of a complete `.ckpt` file at `name` (a path); None while it is written, or for other names.
        A complete file that cannot be read is listed by its name's `step=` (and fails when evaluated)."""
        path = Path(name)
        if path.suffix != ".ckpt" or LAST_RE.match(path.name):
            return None
        try:
            if not zip_is_complete(path):
                return None
            with zipfile.ZipFile(path) as archive:
                index = max((e.file_size for e in archive.infolist() if e.filename.endswith("data.pkl")), default=0)
            if index > MAX_INDEX_BYTES:
                raise CheckpointError(f"its data.pkl unpacks to {index} bytes")
            return _global_step(read_torch_file(path, foreign=True, mmap=True))
        except (FileNotFoundError, IsADirectoryError):  # deleted meanwhile; a folder named *.ckpt
            return None
        except (OSError, CheckpointError, zipfile.BadZipFile):
            match = NAME_STEP_RE.search(path.name)
            return int(match.group(1)) if match else None

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """The file's state_dict, prefix stripped, into `model` (strictly); its `global_step`. Bounded as a
        trainval checkpoint with its optimizer's state is (format.unpacked_size_bound)."""
        state = guarded(path, within, lambda: read_torch_file(path, max_bytes=unpacked_size_bound(model), foreign=True))
        weights = state.get("state_dict") if isinstance(state, dict) else None
        if not isinstance(weights, dict):
            raise CheckpointError("not a Lightning checkpoint: no 'state_dict' entry")
        step = _global_step(state)
        weights = {name[len(self.prefix) :]: weights[name] for name in under_prefix(weights, self.prefix)}
        restore_model(model, {"model": weights})
        return step


def under_prefix(names: Iterable[str], prefix: str) -> list[str]:
    """The names that start with `prefix` (source.prefix: the model's, in another trainer's checkpoint; all of
    them when it is empty); CheckpointError showing one name when none does."""
    names = list(names)
    named = [name for name in names if name.startswith(prefix)]
    if names and not named:
        raise CheckpointError(
            f"no weight's name starts with source.prefix {prefix!r} (they read like {names[0]!r}): set "
            "source.prefix to the model's (a LightningModule's attribute holding it, and a dot)"
        )
    return named


def _global_step(state: Any) -> int:
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"not a Lightning checkpoint: its global_step {step!r} is not a non-negative integer")
    return step


class LightningSource(SourceSection):
    """source.format lightning: a ModelCheckpoint folder (--train-dir) of `.ckpt` files."""

    format: Literal["lightning"] = Field(description=FORMAT)
    prefix: str = Field("model.", description="the LightningModule's attribute prefix stripped from the weights' names")

    def build(self) -> LightningCheckpoints:
        return LightningCheckpoints(self.prefix)
