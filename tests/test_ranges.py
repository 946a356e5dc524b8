"""Every option has a range, and anything outside it is one line naming the key (exit code 2 at the CLIs).

The values are generated from the schema's own constraints (pydantic's Field(ge=..., le=...), Literal
choices, strict types), so a new option is covered by adding it to the schema. In-process: the CLIs'
exit code and one-line output are checked once per flag here and in tests/test_cli_errors.py.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared import config as cfg
from shared.config import ConfigError
from shared.protocol.finished import MAX_WALL_TIME
from shared.tasks.loading import build_model, build_task, config_class, resolve_config, task_class

TASKS = ("digits", "synthetic", "tests.custom_task:BlobsTask")
# Keys whose in-range values may still meet a cross-check with another key (tested in tests/test_config.py).
CROSS_CHECKED = {"train.warmup_steps", "data.fold", "eval.splits", "train.on_plateau.mode", "train.early_stop.mode"}
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # per option


@dataclass(frozen=True)
class Option:
    task: str
    key: str  # dotted, e.g. train.on_plateau.factor
    kind: Any  # int, float, bool, str, a Literal, or list[...] of those
    bounds: dict[str, float]  # ge, gt, le, lt, multiple_of
    default: Any

    def raw(self, value: Any) -> dict[str, Any]:
        """A raw config setting this option (and nothing else but the task) to `value`."""
        *parents, leaf = self.key.split(".")
        raw: dict[str, Any] = {"task": self.task}
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        return raw


def _plain(annotation: Any) -> tuple[Any, dict[str, float]]:
    """(the type without Annotated/Optional, its constraints)."""
    bounds: dict[str, float] = {}
    while True:
        if typing.get_origin(annotation) is Annotated:
            bounds |= _constraints(annotation.__metadata__)
            annotation = annotation.__origin__
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        else:
            return annotation, bounds


def _constraints(metadata: Any) -> dict[str, float]:
    keys = ("ge", "gt", "le", "lt", "multiple_of")
    flat = [m for item in metadata for m in getattr(item, "metadata", [item])]  # Field(...) inside Annotated
    return {k: getattr(m, k) for m in flat for k in keys if getattr(m, k, None) is not None}


def options(task: str, model: type[BaseModel] | None = None, prefix: str = "") -> Iterator[Option]:
    for name, field in (model or config_class(task_class(task))).model_fields.items():
        kind, bounds = _plain(field.annotation)
        bounds |= _constraints(field.metadata)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from options(task, kind, f"{prefix}{name}.")
        # Which task: tests/test_config.py and tests/test_cli_errors.py; which metric (any name the task
        # declares, checked against it): tests/test_tasks.py; which suite (one of suites:): tests/test_cli_errors.py.
        elif name not in ("task", "metric", "best_metric", "feedback_suite"):
            default = field.get_default(call_default_factory=True)
            yield Option(task, f"{prefix}{name}", kind, bounds, default)


OPTIONS = [option for task in TASKS for option in options(task)]


def _item(option: Option) -> Option:
    """What one item of a list option must be."""
    kind, bounds = _plain(typing.get_args(option.kind)[0])
    return Option(option.task, option.key, kind, bounds, None)


def out_of_range(option: Option) -> st.SearchStrategy:
    """Values the option must refuse: past each bound, non-finite floats, and values of the wrong type."""
    kind, b = option.kind, option.bounds
    if typing.get_origin(kind) is list:
        return st.one_of(out_of_range(_item(option)).map(lambda v: [v]), st.integers(), st.text())
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        return st.one_of(st.text().filter(lambda v: v not in choices), st.integers(), st.booleans())
    if kind is bool:
        return st.one_of(st.integers(), st.text(), st.floats())
    if kind is str:
        return st.one_of(st.integers(), st.booleans(), st.lists(st.text(), max_size=2))
    wrong_type = st.one_of(st.booleans(), st.text(), st.none() if option.default is not None else st.nothing())
    if kind is int:
        past = [st.integers(max_value=int(b["ge"]) - 1)] if "ge" in b else []
        past += [st.integers(min_value=int(b["le"]) + 1)] if "le" in b else []
        if "multiple_of" in b:
            step = int(b["multiple_of"])
            past += [
                st.integers(int(b.get("ge", 0)) // step, int(b.get("le", 2**40)) // step).map(lambda v: v * step + 1)
            ]
        return st.one_of(*past, wrong_type, st.floats())
    assert kind is float, option
    past = [st.sampled_from([math.inf, -math.inf, math.nan])]
    if "ge" in b:
        past.append(st.floats(max_value=b["ge"], exclude_max=True, allow_nan=False))
    if "gt" in b:
        past.append(st.floats(max_value=b["gt"], allow_nan=False))
    if "le" in b:
        past.append(st.floats(min_value=b["le"], exclude_min=True, allow_nan=False))
    if "lt" in b:
        past.append(st.floats(min_value=b["lt"], allow_nan=False))
    return st.one_of(*past, wrong_type)


def in_range(option: Option) -> st.SearchStrategy:
    kind, b = option.kind, option.bounds
    if typing.get_origin(kind) is list:
        return st.lists(in_range(_item(option)), max_size=4)
    if typing.get_origin(kind) is Literal:
        return st.sampled_from(typing.get_args(kind))
    if kind is bool:
        return st.booleans()
    if kind is str:  # a free text option (log.mlflow_tracking_uri): checked where it is used, at start
        return st.text(max_size=40)
    low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if kind is int:
        step = int(b.get("multiple_of", 1))
        return st.integers(-(-int(low) // step), int(high) // step).map(lambda v: v * step)
    assert kind is float and low is not None, option  # every float option has at least a lower bound
    return st.floats(low, high, exclude_min="gt" in b, exclude_max="lt" in b, allow_nan=False, allow_infinity=False)


def test_every_option_has_a_range() -> None:
    """Integers are bounded on both sides; floats at least below (lr and the deltas may be any finite size)."""
    for option in [*OPTIONS, *(_item(o) for o in OPTIONS if typing.get_origin(o.kind) is list)]:
        if option.kind is int:
            assert {"ge", "le"} <= option.bounds.keys(), option
        if option.kind is float:
            assert option.bounds.keys() & {"ge", "gt"}, option


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o.task}:{o.key}")
def test_each_default_is_within_its_range(option: Option) -> None:
    """pydantic does not check defaults; an explicit default must load as it is."""
    assert _stored(resolve_config(option.raw(option.default)), option.key) == option.default


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o.task}:{o.key}")
@FEW
@given(data=st.data())
def test_out_of_range_values_are_one_line_naming_the_key(option: Option, data: st.DataObject) -> None:
    value = data.draw(out_of_range(option))
    with pytest.raises(ConfigError) as info:
        resolve_config(option.raw(value))
    message = str(info.value)
    assert message.startswith(option.key) or f"'{option.key}" in message, (option.key, value, message)
    assert "\n" not in message


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.key not in CROSS_CHECKED], ids=lambda o: f"{o.task}:{o.key}"
)
@FEW
@given(data=st.data())
def test_in_range_values_load_as_given(option: Option, data: st.DataObject) -> None:
    value = data.draw(in_range(option))
    assert _stored(resolve_config(option.raw(value)), option.key) == value


def _stored(config: cfg.Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


# The command-line flags with a range: (script module, flag, what it takes, lowest, highest).
FLAGS = [
    ("eval", "--poll", float, 0, cfg.MAX_SECS),
    ("eval", "--idle-timeout", float, 0, cfg.MAX_SECS),
    ("eval", "--after-finished", float, 0, MAX_WALL_TIME),
    ("launch", "--poll", float, 0, cfg.MAX_SECS),
    ("launch", "--stop-timeout", float, 0, cfg.MAX_SECS),
    ("launch", "--evaluators", int, 1, 64),
    ("launch", "--port", int, 0, 65535),
    ("launch", "--folds", int, 2, cfg.MAX_COUNT),
]
REQUIRED = {"eval": ["--train-dir", "runs/x"], "launch": ["--train-dir", "runs/x"]}


def _bad_flag_values(kind: type, low: float, high: float) -> st.SearchStrategy:
    if kind is int:
        outside = st.one_of(st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1))
        return st.one_of(outside.map(str), st.sampled_from(["1.5", "abc", "", "nan"]))
    outside = st.one_of(
        st.floats(max_value=low, exclude_max=True), st.floats(min_value=high, exclude_min=True), st.just(math.nan)
    )
    return st.one_of(outside.map(repr), st.sampled_from(["inf", "-inf", "1e300", "abc", ""]))


@pytest.mark.parametrize(("script", "flag", "kind", "low", "high"), FLAGS)
@FEW
@given(data=st.data())
def test_flags_out_of_range_exit_2_with_one_line(
    script: str, flag: str, kind: type, low: float, high: float, data: st.DataObject
) -> None:
    text = data.draw(_bad_flag_values(kind, low, high))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()) as stderr:
        module.parse_args([*REQUIRED[script], f"{flag}={text}"])
    err = stderr.getvalue()
    assert info.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"{script}.py: error: argument {flag}"), err


@pytest.mark.parametrize(("script", "flag", "kind", "low", "high"), FLAGS)
def test_flags_take_their_bounds(script: str, flag: str, kind: type, low: float, high: float) -> None:
    module = importlib.import_module(script)
    for value in (low, high):
        args = module.parse_args([*REQUIRED[script], f"{flag}={kind(value)}"])
        assert getattr(args, flag.lstrip("-").replace("-", "_")) == value


def test_a_model_too_large_to_allocate_is_a_config_error() -> None:
    """Sizes within their ranges can still ask for terabytes: refused at the build, with one line."""
    config = resolve_config({"task": "digits", "model": {"hidden": cfg.MAX_COUNT}})
    with pytest.raises(ConfigError) as info:
        build_model(build_task(config), torch.device("cpu"))
    message = str(info.value)
    assert message.startswith("model: DigitsTask cannot build its model") and "hidden=2147483647" in message
    assert "choose smaller sizes" in message and "\n" not in message
