"""Where options come from and go: YAML files, `--set section.key=value` overrides, and the saved copy."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from shared.config.schema import Config
from shared.protocol.files import write_atomic
from shared.runtime.errors import ConfigError


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a number, as YAML 1.2 does (PyYAML's 1.1 rules give a string,
    which the strict number fields would refuse)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text: the safe loader, so no tag can build an object."""
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: plain data only


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or ConfigError saying why it is not one."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist{_nearby(path)}; pass an existing file to --config"
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got a {type(raw).__name__}")
    return raw


def _nearby(path: Path) -> str:
    """' (did you mean configs/digits.yaml?)' for the closest file name beside a missing `path`, else ''."""
    try:
        names = [entry.name for entry in os.scandir(path.parent) if entry.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Lay `section.key=value` strings over a raw config; values are parsed as YAML scalars."""
    raw = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.01")
        try:
            value = parse_yaml(text) if text else ""
        except yaml.YAMLError:
            value = text
        node = raw
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parents[: i + 1])} is not a section")
            node[part] = child = dict(child)
            node = child
        node[leaf] = value
    return raw


def read_with_overrides(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The raw mapping of a config file with `--set` overrides laid over it, not validated yet."""
    return apply_overrides(read_yaml(path), list(overrides))


def save(config: Config, path: Path) -> None:
    """Write the resolved config atomically, so eval.py never reads half of it."""
    write_atomic(path, to_yaml(config).encode())


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
