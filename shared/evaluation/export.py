"""`<train_dir>/best/`: the best evaluated weights, as safetensors, with the config and metrics beside them,
and what the task adds for other tools (a Hugging Face model's config.json and tokenizer: Task.export_files).

An evaluator exports the weights it holds in memory right after scoring a checkpoint, before that
step's ledger record: train.py's retention may delete the checkpoint file as soon as the record is
there, so re-reading the file later could find nothing. A crash between export and record only means
the step is scored (and compared) again.

`best` is a relative symlink to a complete hidden folder `.best-<step>`. A new best is written in full
into `.best-<step>.tmp`, fsynced, renamed to `.best-<step>`, and then a new symlink is renamed over
`best` (rename is atomic), so a reader sees the old best or the new one, never a mix. Several
evaluators may share a train_dir: each compares and switches under an exclusive flock on `.best.lock`.

On a file system without symlinks (vfat, exFAT, SMB, gcsfuse, s3fs) `best` is the folder itself: the old one
is renamed away, then the new one onto `best`. Between the two renames a reader finds the new one under its
hidden name; a crash there is repaired by the next export, which renames it onto `best`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from shared import config as cfg
from shared.errors import CheckpointError, RunAborted, UsageError
from shared.protocol import numbers
from shared.protocol.files import (
    NO_LINKS,
    RECORD_BYTES,
    exclusive_lock,
    fsync_dir,
    read_file,
    remove_tree,
    write_synced,
)
from shared.protocol.layout import TrainDir
from shared.protocol.results import EvalResult, RecordError

if TYPE_CHECKING:  # torch and the tasks are imported where they are used: launch.py reads best/ without them
    import torch
    from torch import nn

    from shared.tasks import Task

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.yaml", "metrics.json"


def held_best(train_dir: TrainDir) -> EvalResult | None:
    """The result best/ holds now, or None when there is none yet (or its metrics.json is no result)."""
    summary = read_best(train_dir)
    try:
        return None if summary is None else EvalResult.from_record(summary | {"status": "ok"})
    except RecordError:
        return None


def read_best(train_dir: TrainDir) -> dict[str, Any] | None:
    """best/metrics.json, or None when there is no best yet."""
    try:
        return json.loads(read_file(train_dir.best / METRICS, RECORD_BYTES))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def export_if_best(
    train_dir: TrainDir, task: Task, model: nn.Module, config: cfg.Config, candidate: EvalResult
) -> dict[str, Any] | None:
    """Make `model`'s weights (with `task`'s files) best/ if `candidate` beats the current best by eval.best_metric.

    Returns the new metrics.json contents, or None when the current best stays.
    """
    metric = config.eval.best_metric
    upwards = config.eval.best_higher_is_better
    if not numbers.finite(value := candidate.value(metric)):
        log.warning("step %d: its %s is %s, never the best; best/ stays as it is", candidate.step, metric, value)
        return None
    with exclusive_lock(train_dir.best_lock, "best/ is locked", wait=True):
        _finish_a_cut_switch(train_dir)
        if not candidate.beats(held_best(train_dir), metric, upwards):
            return None
        summary = _summary(candidate, metric, upwards)
        try:
            _switch(train_dir, _write_version(train_dir, task, model, config, summary))
        except (OSError, SafetensorError) as err:  # disk full, read-only: the step has no record yet, so a restart
            remove_tree(train_dir.best_version(candidate.step, temp=True))  # redoes it
            raise RunAborted(
                f"cannot export step {candidate.step} to {train_dir.best}: {err}; fix that and start eval.py again "
                "(it evaluates this step again)"
            ) from None
    log.info("new best: step %d, %s=%.4f, exported to %s", candidate.step, metric, summary["value"], train_dir.best)
    return summary


def _summary(best: EvalResult, metric: str, upwards: bool) -> dict[str, Any]:
    """best/metrics.json: the result (its first split's and every split's metrics) and what ranked it."""
    record = best.to_record()
    return {
        "step": best.step,
        "metric": metric,
        "mode": "max" if upwards else "min",
        "value": best.value(metric),
        "file": best.file,
        "metrics": record["metrics"],
        "split_metrics": record["split_metrics"],
        "wall_time": time.time(),
    }


def _write_version(
    train_dir: TrainDir, task: Task, model: nn.Module, config: cfg.Config, summary: dict[str, Any]
) -> Path:
    """Write a complete, fsynced `.best-<step>` folder (through a temp name) and return it."""
    temp, final = train_dir.best_version(summary["step"], temp=True), train_dir.best_version(summary["step"])
    for stale in (temp, final):  # left by a crash (or links planted there); never the current target
        remove_tree(stale)
    temp.mkdir()
    write_weights(model, temp / WEIGHTS)
    task.export_files(model, temp)
    for written in temp.iterdir():
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    # Plain writes, each fsynced, and one fsync of the folder: it is renamed into place whole.
    write_synced(temp / CONFIG, config_yaml(config))
    write_synced(temp / METRICS, (numbers.dumps(summary, indent=2) + "\n").encode())
    fsync_dir(temp)
    os.replace(temp, final)
    return final


# An evaluator exports one config all its life; YAML's pure-Python writer costs milliseconds at each export.
_CONFIG_YAML: dict[int, tuple[cfg.Config, bytes]] = {}


def config_yaml(config: cfg.Config) -> bytes:
    """best/config.yaml's bytes, written once per config object (kept here, so its id is not reused)."""
    if id(config) not in _CONFIG_YAML:
        _CONFIG_YAML[id(config)] = (config, cfg.to_yaml(config).encode())
    return _CONFIG_YAML[id(config)][1]


def write_weights(model: nn.Module, path: Path) -> None:
    """`model`'s state dict as safetensors (any device, copied to the CPU), each tensor of shared storage
    once: tied weights (an output layer that is the input embedding) keep their first name in the state
    dict, and the others are recorded in the file's metadata as `{alias: stored name}`, as
    `safetensors.torch.save_model` records them, so read_weights (and safetensors' `load_model`) restore
    them. Views that only overlap are stored as copies."""
    from safetensors.torch import save_file

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    names_by_view: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view in names_by_view:
            aliases[name] = names_by_view[view]
            continue
        names_by_view[view] = name
        stored[name] = tensor.clone() if storage in storages else tensor.contiguous()
        storages.add(storage)
    save_file(stored, str(path), metadata=aliases)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's state dict with the aliases write_weights recorded put back: what a plain
    `load_state_dict(strict=True)` of a fresh model of the same class takes."""
    with safe_open(str(path), framework="pt") as f:
        names, aliases = f.keys(), f.metadata() or {}
        state = {name: f.get_tensor(name) for name in names}
    for alias, name in aliases.items():
        if name in state and alias not in state:
            state[alias] = state[name]
    return state


def _switch(train_dir: TrainDir, version: Path) -> None:
    """Point `best` at `version` with one rename (two without symlinks), then remove every other best folder."""
    link = train_dir.best_link_temp
    link.unlink(missing_ok=True)
    try:
        link.symlink_to(version.name)  # relative: the train_dir can be moved or mounted elsewhere
    except OSError as err:
        if err.errno not in NO_LINKS:
            raise
        if train_dir.best.is_dir():  # the previous best: renamed to a temp's name, removed below
            os.replace(train_dir.best, version.with_name(version.name + ".tmp"))
        os.replace(version, train_dir.best)
    else:
        os.replace(link, train_dir.best)
    fsync_dir(train_dir.root)
    for entry in train_dir.root.iterdir():
        if train_dir.best_version_re.match(entry.name) and entry.name != version.name:
            remove_tree(entry)


def _finish_a_cut_switch(train_dir: TrainDir) -> None:
    """A switch cut short leaves no `best` and the new one complete under its hidden name (the only such
    folder: each switch removes the others; without symlinks, cut between its two renames): finish it."""
    if not train_dir.best.exists() and (version := _complete_version(train_dir)) is not None:
        _switch(train_dir, version)


def _complete_version(train_dir: TrainDir) -> Path | None:
    """The newest complete `.best-<step>` folder (a temp's name is never complete), or None."""
    found = [
        entry for entry in train_dir.root.iterdir() if (m := train_dir.best_version_re.match(entry.name)) and not m[2]
    ]
    return max(found, default=None)


def best_folder(train_dir: TrainDir) -> Path:
    """The complete folder `best` points at now, or UsageError when there is none yet."""
    if not (train_dir.best / METRICS).exists():
        if (version := _complete_version(train_dir)) is not None:
            return version  # without symlinks: between a switch's two renames, or after a crash there
        raise UsageError(
            f"no best checkpoint yet: the eval.py daemon exports it to {train_dir.best} once it has evaluated one; "
            "run the daemon first, or use --checkpoint latest"
        )
    return train_dir.best.resolve()


def restore_best(model: nn.Module, train_dir: TrainDir) -> dict[str, Any]:
    """Load best/'s weights into `model` (strictly) and return its metrics.json; CheckpointError if unusable.

    Another evaluator may switch `best` meanwhile and remove the folder being read: then read the new one.
    """
    while True:
        folder = best_folder(train_dir)
        which = _identity(folder)
        try:
            summary = json.loads(read_file(folder / METRICS, RECORD_BYTES))
            model.load_state_dict(read_weights(folder / WEIGHTS), strict=True)
            return summary
        except FileNotFoundError as err:
            if which == _identity(best_folder(train_dir)):  # not switched meanwhile: really missing
                raise CheckpointError(f"{err.filename} is missing") from None
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # corrupt, or another model
            raise CheckpointError(f"{folder / WEIGHTS}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which folder this is (a real `best` folder keeps its name when switched), or None if gone."""
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def load_best(train_dir: str | os.PathLike) -> nn.Module:
    """The best model of a train_dir, ready for inference: built from best/config.yaml, with its weights."""
    from shared.tasks.loading import build_task, load_config

    root = TrainDir(Path(train_dir))
    model = build_task(load_config(best_folder(root) / CONFIG)).build_model()
    restore_best(model, root)
    return model.eval()
