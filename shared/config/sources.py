"""Where options come from and go: YAML files, `--set section.key=value` overrides, and the saved copy."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from shared.config.schema import Config
from shared.errors import ConfigError
from shared.protocol.files import read_file, write_atomic

# Bounds on a config file, checked before (size) and while (depth, values) it is parsed: a config is a few
# hundred bytes of a few levels, and a file from an untrusted train_dir must not take the process's memory
# (a 513-byte alias bomb expands to billions of values) or its stack (deep nesting).
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000  # scalars, lists and mappings, counting each alias as the values it stands for


class BoundExceeded(yaml.YAMLError):
    """YAML past one of the bounds above; the message says which."""


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a number, as YAML 1.2 does (PyYAML's 1.1 rules give a string,
    which the strict number fields would refuse), and refuses a document nested deeper than MAX_DEPTH (before
    the composer's recursion overflows the stack) or whose aliases expand it past MAX_VALUES values (before
    anything expands them: a reader that walks the data, a repr in an error message, would)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise BoundExceeded(f"nests deeper than {MAX_DEPTH} levels (a config needs a few)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _count_values(node, {})
        return super().construct_document(node)


def _count_values(node: yaml.Node, counted: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded, counted once per node (an alias is
    the node it names again), so a bomb is measured without being expanded."""
    if id(node) in counted:
        return counted[id(node)]
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1 + sum(_count_values(child, counted) for child in children)
    if total > MAX_VALUES:
        raise BoundExceeded(
            f"expands to more than {MAX_VALUES:,} values through its aliases (*name), a YAML alias bomb?"
        )
    counted[id(node)] = total
    return total


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text: the safe loader, so no tag can build an object."""
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: plain data only


def read_yaml(path: str | Path, follow_links: bool = True) -> dict[str, Any]:
    """A YAML mapping from a file, or ConfigError saying why it is not one. A train_dir's config.yaml is
    read with `follow_links` off (train.py never writes it as a link); any config is read without blocking,
    from a regular file of at most MAX_CONFIG_BYTES, within the parser's bounds."""
    path = Path(path)
    try:
        text = read_file(path, MAX_CONFIG_BYTES, follow_links).decode("utf-8")
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
    except BoundExceeded as err:
        raise ConfigError(f"config file {path} {err}; not read: write the config out plainly") from None
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


def read_with_overrides(path: str | Path, overrides: list[str] = (), follow_links: bool = True) -> dict[str, Any]:
    """The raw mapping of a config file with `--set` overrides laid over it, not validated yet."""
    return apply_overrides(read_yaml(path, follow_links), list(overrides))


def save(config: Config, path: Path) -> None:
    """Write the resolved config atomically, so eval.py never reads half of it."""
    write_atomic(path, to_yaml(config).encode())


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
