"""Metric values in JSON files: JSON has no NaN or infinity, so a non-finite float is written as the string
`"NaN"`, `"Infinity"` or `"-Infinity"` and read back as that float. Files written before (bare `NaN`, which
Python's json module reads) are read as they are."""

from __future__ import annotations

import json
import math
from typing import Any

_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encodable(value: Any) -> Any:
    """`value` with every non-finite float (in dicts and lists too) as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: encodable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encodable(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """json.dumps that writes valid JSON: non-finite floats as strings (never a bare NaN). Walked for them
    only when there are some: the walk copies every number (milliseconds for an outcome's PR curves)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:  # a non-finite float somewhere
        return json.dumps(encodable(value), allow_nan=False, **options)


def is_number(value: Any) -> bool:
    """A JSON number, or the string of a non-finite one."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, str) and value in _TEXT
    )


def number(value: Any) -> float:
    """The float a JSON value holds (see is_number)."""
    return _TEXT[value] if isinstance(value, str) else float(value)


def finite(value: float | None) -> bool:
    """A value that can be compared: present, and neither NaN nor infinite."""
    return value is not None and math.isfinite(value)
