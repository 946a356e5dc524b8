"""docs/config-reference.md, generated: every key of every config section (the built-in tasks' model and
data sections too) with its type, range, default and the one line on why from its Field(description=...).

The schema is the one home of all four, so the page cannot drift: tests/test_config_reference.py fails
when the committed page differs from this module's output. It lives beside shared.tasks.loading because it
needs both the schema and the built-in tasks (shared.config knows no task). Regenerate the page with

    .venv/bin/python -m shared.tasks.reference > docs/config-reference.md
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator

import yaml
from pydantic.fields import FieldInfo

from shared import config as cfg
from shared.checkpoints.sources import FORMATS
from shared.tasks.loading import BUILTIN_TASKS, task_class

COMMAND = ".venv/bin/python -m shared.tasks.reference > docs/config-reference.md"
# Bounds shown by what they are (shared/config/schema.py says why each is the bound).
NAMED_BOUNDS = {
    cfg.MAX_COUNT: "2^31 - 1",
    cfg.schema.MAX_SEED: "2^32 - 1",
    cfg.schema.MAX_STEP: "999,999,999",
    cfg.MAX_SECS: "2,592,000 (30 days)",
}
CONSTRAINTS = ("ge", "gt", "le", "lt", "multiple_of")
HEADER = f"""# Config reference

Every key of every config section: its type, the values allowed, its default and what it is for. Floats
must be finite (no inf, no NaN), and types are strict (docs/config.md, "Bad input"); the cross-checks
between keys are in docs/config.md too. A config file need only name what differs from these defaults.

<!-- Generated from shared/config/schema.py and the built-in tasks' sections; do not edit by hand.
     Regenerate with: {COMMAND} -->
"""


def number(value: float) -> str:
    if value in NAMED_BOUNDS:
        return NAMED_BOUNDS[value]
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def yaml_value(value: object) -> str:
    """A default as it would be written in a config file."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("...\n").strip()


def bounds(metadata: list[object]) -> str:
    """The range that Field(ge=..., le=..., gt=..., lt=..., multiple_of=...) constraints allow."""
    found = {key: getattr(m, key) for m in metadata for key in CONSTRAINTS if hasattr(m, key)}
    low = (">=", found["ge"]) if "ge" in found else (">", found["gt"]) if "gt" in found else None
    high = ("<=", found["le"]) if "le" in found else ("<", found["lt"]) if "lt" in found else None
    if low and high and (low[0], high[0]) == (">=", "<="):
        text = f"{number(low[1])} to {number(high[1])}"
    elif low and high and (low[0], high[0]) == (">", "<"):
        text = f"between {number(low[1])} and {number(high[1])}, exclusive"
    else:
        text = ", ".join(f"{sign} {number(bound)}" for sign, bound in filter(None, (low, high)))
    if "multiple_of" in found:
        text += f", a multiple of {found['multiple_of']}"
    return text


def kind_and_range(annotation: object, metadata: list[object]) -> tuple[str, str]:
    """(type, allowed values) of an annotation with its constraints, for a table row."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = [m for info in args[1:] for m in (info.metadata if isinstance(info, FieldInfo) else [info])]
        return kind_and_range(args[0], [*metadata, *inner])
    if origin is typing.Literal:
        return "string", "one of " + ", ".join(f"`{choice}`" for choice in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [kind_and_range(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(kind for kind, _ in kinds) + " or null", "; ".join(r for _, r in kinds if r)
    if origin is list:
        kind, allowed = kind_and_range(args[0], [])
        return f"list of {kind}", f"each {allowed}" if allowed else ""
    names = {int: "integer", float: "number", bool: "boolean", str: "string"}
    if annotation not in names:
        raise TypeError(f"no rendering for the type {annotation!r}; teach shared/tasks/reference.py about it")
    return names[annotation], bounds(metadata)


def default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    return "see below" if isinstance(value, cfg.Section) else f"`{yaml_value(value)}`"


def rows(section: type[cfg.Section], prefix: str, skip: frozenset[str] = frozenset()) -> Iterator[str]:
    for name, field in section.model_fields.items():
        if name in skip:
            continue
        if not field.description:
            raise ValueError(f"{section.__name__}.{name} has no description: give it Field(..., description=...)")
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, cfg.Section)
        kind, allowed = ("section", "") if nested else kind_and_range(field.annotation, field.metadata)
        cells = [f"`{prefix}{name}`", kind, allowed.replace("|", "\\|"), default(field), field.description]
        yield "| " + " | ".join(cells) + " |"


def table(title: str, section: type[cfg.Section], prefix: str, intro: str, skip: frozenset[str] = frozenset()) -> str:
    lines = [f"## {title}", "", intro] if intro else [f"## {title}"]
    lines += [
        "",
        "| key | type | allowed | default | what for |",
        "|---|---|---|---|---|",
        *rows(section, prefix, skip),
    ]
    return "\n".join(lines) + "\n"


def summary(section: type[cfg.Section]) -> str:
    """The first paragraph of a section's docstring, as one line."""
    return " ".join((section.__doc__ or "").split("\n\n")[0].split())


def page() -> str:
    """The whole page: the generic sections in config-file order, then each built-in task's own keys."""
    top = cfg.Config
    nested = frozenset(name for name, f in top.model_fields.items() if isinstance(f.default_factory, type))
    tables = [
        table("Top level", top, "", "The keys outside any section.", nested),
        table("data", cfg.DataConfig, "data.", "Every task's data section has these; a task adds its own (below)."),
    ]
    for name in ("train", "checkpoint", "log", "eval"):
        section = top.model_fields[name].annotation
        tables.append(table(name, section, f"{name}.", ""))
        for sub, field in section.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, cfg.Section):
                tables.append(table(f"{name}.{sub}", field.annotation, f"{name}.{sub}.", summary(field.annotation)))
    suite = "suites.NAME"  # a mapping of names to sections: one table for them all
    tables.append(table(suite, cfg.SuiteConfig, f"{suite}.", summary(cfg.SuiteConfig)))
    for name, section in FORMATS.items():  # eval.yaml's source: for another trainer's run
        tables.append(table(f"source, format: {name}", section, "source.", summary(section)))
    generic = frozenset(cfg.DataConfig.model_fields)
    for task in BUILTIN_TASKS:
        cls = task_class(task)
        tables.append(table(f"model, task: {task}", cls.ModelConfig, "model.", ""))
        intro = f"Besides every task's data keys. {summary(cls.DataConfig)}".strip()
        tables.append(table(f"data, task: {task}", cls.DataConfig, "data.", intro, generic))
    return "\n".join([HEADER, *tables])


if __name__ == "__main__":
    print(page(), end="")
