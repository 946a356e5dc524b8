"""A raw mapping in, a validated Config out; pydantic's first error becomes one line that names the key
and what is allowed, read from the schema's own constraints."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from shared.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a section (mapping)",
    "model_attributes_type": "a section (mapping)",
    "dict_type": "a section (mapping)",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def resolve(raw: Any, schema: type[Model], context: dict[str, Any] | None = None) -> Model:
    """`schema` validated from `raw` (with pydantic's validation `context`), or ConfigError with one line about
    the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got a {type(raw).__name__}")
    try:
        return schema.model_validate(raw, context=context)
    except ValidationError as err:
        errors = err.errors()
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains the rest
        raise ConfigError(error_line(schema, first)) from None


def error_line(schema: type[BaseModel], error: ErrorDetails) -> str:
    """One line for one pydantic error: the dotted key, what it must be, and the value given."""
    loc = error["loc"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    kind, given = error["type"], _shown(error.get("input"))
    if kind == "extra_forbidden":
        return _unknown_key(schema, loc)
    _, metadata, nullable = _target(schema, loc)
    null = ", or null (off)" if nullable else ""
    allowed = _range_text(metadata)
    if kind in _BOUNDS:
        bound = next(v for k, v in (error.get("ctx") or {}).items() if k in _BOUND_KEYS)
        violated = f"{_BOUNDS[kind]} {_number(bound)}"
        also = f" (allowed: {allowed})" if allowed != violated else ""
        return f"{key}: must be {violated}{also}{null}, got {given}"
    if kind == "multiple_of":
        return f"{key}: must be a multiple of {_number(error['ctx']['multiple_of'])}, got {given}"
    if kind == "finite_number":
        return f"{key}: must be a finite number{' ' + allowed if allowed else ''}{null}, got {given}"
    if kind == "literal_error":
        return f"{key}: expected one of {error['ctx']['expected']}, got {given}"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}{null}, got {given}"
    return f"{key}: {error['msg']}, got {given}"


def _unknown_key(schema: type[BaseModel], loc: tuple[Any, ...]) -> str:
    *parents, leaf = loc
    section, _, _ = _target(schema, tuple(parents))
    allowed = list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
    prefix = "".join(f"{part}." for part in parents)
    close = [prefix + name for name in difflib.get_close_matches(str(leaf), allowed, n=1)]
    close = close or _keys_elsewhere(schema, str(leaf))
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown key {prefix + str(leaf)!r}{hint}; allowed keys here: {', '.join(allowed) or 'none'}"


def _keys_elsewhere(schema: type[BaseModel], leaf: str) -> list[str]:
    """The dotted keys anywhere in the schema named `leaf`, or else the closest name: `--set lr=0.1` and
    `train: {batch_size: 8}` were meant for train.lr and data.batch_size or eval.batch_size."""
    by_name: dict[str, list[str]] = {}
    for key in _dotted_keys(schema):
        by_name.setdefault(key.rpartition(".")[2], []).append(key)
    closest = difflib.get_close_matches(leaf, list(by_name), n=1)
    return by_name[closest[0]] if closest else []


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key of the schema, sections and options alike, dotted (`train`, `train.on_plateau.patience`)."""
    for name, field in model.model_fields.items():
        yield prefix + name
        tp, _, _ = _unwrap(field.annotation)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            yield from _dotted_keys(tp, f"{prefix}{name}.")


def _target(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, list[Any], bool]:
    """The type at `loc` in the schema, its constraints (Field(ge=...) and the like), and whether null is allowed."""
    tp, metadata, nullable = _unwrap(schema)
    for part in loc:
        if isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp, inner, nullable = _unwrap(field.annotation)
            metadata = [*field.metadata, *inner]
        elif isinstance(part, int) and typing.get_origin(tp) in (list, tuple) and typing.get_args(tp):
            tp, metadata, nullable = _unwrap(typing.get_args(tp)[0])
        else:
            break  # a tag pydantic adds inside unions, or a key the schema does not have
    return tp, metadata, nullable


def _unwrap(tp: Any) -> tuple[Any, list[Any], bool]:
    """`Annotated[X | None, ...]` -> (X, its constraints, True)."""
    metadata: list[Any] = []
    nullable = False
    while True:
        if typing.get_origin(tp) is Annotated:  # a Field(ge=...) in there holds its constraints as metadata
            metadata += [m for item in tp.__metadata__ for m in getattr(item, "metadata", [item])]
            tp = tp.__origin__
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            nullable = nullable or len(options) < len(typing.get_args(tp))
            if len(options) != 1:
                return tp, metadata, nullable
            tp = options[0]
        else:
            return tp, metadata, nullable


def _range_text(metadata: list[Any]) -> str:
    """'between 0 and 1', '> 0', 'between 0 and 1, exclusive', ... from annotated_types constraints."""
    bounds = {k: getattr(m, k) for m in metadata for k in _BOUND_KEYS if getattr(m, k, None) is not None}
    low = next((k for k in ("ge", "gt") if k in bounds), None)
    high = next((k for k in ("le", "lt") if k in bounds), None)
    if low and high:
        span = f"between {_number(bounds[low])} and {_number(bounds[high])}"
        if (low, high) == ("ge", "le"):
            return span
        if (low, high) == ("gt", "lt"):
            return f"{span}, exclusive"
    return " and ".join(f"{_BOUND_KEYS[k]} {_number(bounds[k])}" for k in (low, high) if k)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
