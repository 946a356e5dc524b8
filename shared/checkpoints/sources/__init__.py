"""Checkpoint formats, one module each: train.py's own (`trainval`, the default) and other trainers' (eval.py
--config with a `source:` section). A new format is a module here with a CheckpointSource and its
SourceSection, and one entry in FORMATS (docs/foreign-runs.md)."""

from __future__ import annotations

from typing import Any

from shared.checkpoints.sources.base import CheckpointSource, SourceSection
from shared.checkpoints.sources.dcp import DcpSource
from shared.checkpoints.sources.files import FilesSource
from shared.checkpoints.sources.hf import HFSource
from shared.checkpoints.sources.lightning import LightningSource
from shared.checkpoints.sources.trainval import TrainvalCheckpoints
from shared.config import resolve
from shared.errors import ConfigError

TRAINVAL = TrainvalCheckpoints()
# source.format -> its section: each foreign format's options (validated with ranges, one line per error).
FORMATS: dict[str, type[SourceSection]] = {
    "hf": HFSource,
    "lightning": LightningSource,
    "dcp": DcpSource,
    "files": FilesSource,
}


def resolve_source(raw: Any) -> SourceSection:
    """The `source:` section of an eval.yaml, validated by its format's own section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"source: a section (mapping) with a format ({', '.join(FORMATS)}), got {raw!r}")
    section = FORMATS.get(raw.get("format"))
    if section is None:
        raise ConfigError(f"source.format: one of {', '.join(FORMATS)}, got {raw.get('format')!r}")
    try:
        return resolve(raw, section)
    except ConfigError as err:
        message = str(err)  # about one of the section's keys, or (an unknown key) about the section
        if not message.startswith("source."):
            message = f"source.{message}" if message.partition(":")[0] in section.model_fields else f"source: {message}"
        raise ConfigError(message) from None


__all__ = ["FORMATS", "TRAINVAL", "CheckpointSource", "SourceSection", "resolve_source"]
