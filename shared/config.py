"""Options: YAML files parsed into typed dataclasses, `--set section.key=value` overrides, and the
copy saved into the train_dir that eval.py rebuilds the model from.

Every bad key, type or value raises `ConfigError` naming the key and what is allowed; the CLIs turn it
into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.metrics.direction import higher_is_better
from shared.protocol.files import write_atomic
from shared.runtime.errors import UsageError


class ConfigError(UsageError):
    """A config file or override that cannot be used as it is."""


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a number, as YAML 1.2 does (PyYAML's 1.1 rules give a string)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text: the safe loader, so no tag can build an object."""
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: plain data only


def at_least(low: float, *, strict: bool = False) -> dict[str, Any]:
    """Field metadata: the value must be >= low (> low when strict)."""
    check = (lambda v: v > low) if strict else (lambda v: v >= low)
    return {"check": check, "allowed": f"{'>' if strict else '>='} {low}"}


def between(low: float, high: float, *, strict: bool = False) -> dict[str, Any]:
    """Field metadata: low <= value <= high (low < value < high when strict)."""
    if strict:
        return {"check": lambda v: low < v < high, "allowed": f"between {low} and {high}, exclusive"}
    return {"check": lambda v: low <= v <= high, "allowed": f"between {low} and {high}"}


# What eval.py measures; each improves upwards except loss.
Metric = Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"]


def resolved_mode(metric: str, mode: str) -> str:
    """`auto` (as in Keras) is min for loss and max for the others."""
    if mode != "auto":
        return mode
    return "max" if higher_is_better(metric) else "min"


@dataclass
class ModelConfig:
    """The model section of a task that has no model options."""


@dataclass
class DataConfig:
    """Options every task's data section has; a task subclasses this to add its own."""

    batch_size: int = field(default=64, metadata=at_least(1))
    num_workers: int = field(default=0, metadata=at_least(0))  # DataLoader workers, for file-backed data
    on_device: bool = False  # keep an in-memory (TensorDataset) training set on the training device
    folds: int = field(default=0, metadata=at_least(0))  # cross-validation: K folds of the training set; 0/1: off
    fold: int = field(default=0, metadata=at_least(0))  # the held-out fold (the `val` split), 0 <= fold < folds


@dataclass
class PlateauConfig:
    """train.on_plateau: cut the LR when an evaluation metric stops improving (Keras ReduceLROnPlateau)."""

    metric: Metric = "loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for loss, max for the others
    split: str = "val"  # which evaluation split feeds it
    patience: int = field(default=0, metadata=at_least(0))  # evaluations without improvement; 0 turns it off
    factor: float = field(default=0.1, metadata=between(0, 1, strict=True))  # the multiplier's cut
    min_delta: float = field(default=1e-4, metadata=at_least(0))  # a smaller change is no improvement
    cooldown: int = field(default=0, metadata=at_least(0))  # evaluations after a cut before counting again
    min_lr: float = field(default=0.0, metadata=at_least(0))  # cuts stop once train.lr x multiplier is this low


@dataclass
class EarlyStopConfig:
    """train.early_stop: stop when an evaluation metric stops improving (Keras EarlyStopping)."""

    metric: Metric = "loss"
    mode: Literal["auto", "min", "max"] = "auto"
    split: str = "val"
    patience: int = field(default=0, metadata=at_least(0))  # evaluations without improvement; 0 turns it off
    min_delta: float = field(default=0.0, metadata=at_least(0))


def _off_or_at_least_0() -> dict[str, Any]:
    return {"check": lambda v: v is None or v >= 0, "allowed": ">= 0, or null (off)"}


@dataclass
class TrainConfig:
    steps: int = field(default=1000, metadata=at_least(1))
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    lr: float = field(default=1e-3, metadata=at_least(0, strict=True))
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    momentum: float = field(default=0.9, metadata=between(0, 1))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = field(default=0, metadata=at_least(0))
    min_lr_ratio: float = field(default=0.0, metadata=between(0, 1))
    grad_clip_norm: float = field(default=0.0, metadata=at_least(0))  # 0 turns clipping off
    grad_accum_steps: int = field(default=1, metadata=at_least(1))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile the model for training
    nan_policy: Literal["stop", "skip_step"] = "stop"  # on a NaN/Inf loss or gradient norm
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the model
    on_plateau: PlateauConfig = field(default_factory=PlateauConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # Wait at a save while more than this many checkpoints are not evaluated yet (docs/protocol.md); null: never
    max_eval_lag: int | None = field(default=None, metadata=_off_or_at_least_0())


@dataclass
class CheckpointConfig:
    every_steps: int = field(default=100, metadata=at_least(0))  # 0: only by time and at the end
    every_secs: float = field(default=0.0, metadata=at_least(0))  # 0: only by steps and at the end
    max_to_keep: int = field(default=5, metadata=at_least(1))
    keep_every_n_steps: int = field(default=0, metadata=at_least(0))  # 0: keep no extra ones
    max_unevaluated: int = field(default=20, metadata=at_least(0))  # see docs/protocol.md, retention
    keep_best: int = field(default=0, metadata=at_least(0))  # also keep the N best by eval.best_metric; 0: none
    max_save_failures: int = field(default=3, metadata=at_least(1))  # in a row, then exit; 1 = at the first
    async_save: bool = True  # the loop only snapshots; a background thread writes (see docs/protocol.md)


@dataclass
class LogConfig:
    every_steps: int = field(default=10, metadata=at_least(1))


@dataclass
class EvalConfig:
    batch_size: int = field(default=512, metadata=at_least(1))
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    best_metric: Metric = "accuracy"
    best_mode: Literal["max", "min"] = "max"
    rescan_secs: float = field(default=5.0, metadata=at_least(0, strict=True))
    policy: Literal["all", "latest"] = "all"  # latest: when behind, skip to the newest (recorded as skipped)
    # Several evaluators on one train_dir: a claim not refreshed for this long is taken over (see docs/protocol.md).
    claim_timeout_secs: float = field(default=60.0, metadata=at_least(1))
    # Evaluated at every checkpoint, each into its own TensorBoard run; the first also scores best_metric.
    splits: list[Literal["val", "train", "test"]] = field(default_factory=lambda: ["val"])
    max_examples: int = field(default=0, metadata=at_least(0))  # > 0: a fixed subset of each split; 0: all


@dataclass
class Config:
    task: str = "digits"
    seed: int = 0
    model: Any = field(default_factory=ModelConfig)
    data: Any = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Sections that define what a checkpoint contains and means: a train_dir refuses a change to these,
# except to keys that only say how to load the data.
IDENTITY_KEYS = ("task", "model", "data")
RUNTIME_KEYS = ("data.num_workers", "data.on_device")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or ConfigError saying why it is not one."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing file to --config") from None
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


def resolve(raw: dict[str, Any]) -> Config:
    """A typed, validated Config from a raw mapping; the task chooses the model and data sections."""
    from shared.tasks import task_class  # the task decides the shape of its sections

    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got a {type(raw).__name__}")
    _reject_unknown(raw, [f.name for f in dataclasses.fields(Config)], "")
    task_name = _coerce(raw.get("task", Config.task), str, "task")
    task = task_class(task_name)
    sections = {"model": task.ModelConfig, "data": task.DataConfig}
    hints = typing.get_type_hints(Config)
    values: dict[str, Any] = {"task": task_name}
    for f in dataclasses.fields(Config):
        if f.name == "task" or f.name not in raw:
            continue
        values[f.name] = _coerce(raw[f.name], sections.get(f.name, hints[f.name]), f.name)
    config = Config(**values)
    for name, cls in sections.items():
        if not isinstance(getattr(config, name), cls):
            setattr(config, name, cls())
    _check_combinations(config)
    return config


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    return resolve(apply_overrides(read_yaml(path), list(overrides)))


def save(config: Config, path: Path) -> None:
    """Write the resolved config atomically, so eval.py never reads half of it."""
    write_atomic(path, to_yaml(config).encode())


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, child in value.items():
            items.update(flatten(child, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Every flattened key whose value differs, as key -> (old, new)."""
    a, b = flatten(old), flatten(new)
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def check_same_identity(saved: Config, new: Config, what: str) -> dict[str, tuple[Any, Any]]:
    """Refuse a config whose task, model or data differ from the train_dir's; return the other changes."""
    changed = differences(saved, new)
    identity = {k: v for k, v in changed.items() if k.split(".")[0] in IDENTITY_KEYS and k not in RUNTIME_KEYS}
    if identity:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in identity.items()))
        raise ConfigError(
            f"{what} differs from the train_dir's config.yaml in the model or data ({listed}); "
            "use a new --train-dir, or drop these changes"
        )
    return changed


def _reject_unknown(raw: dict[str, Any], allowed: list[str], prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            name = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            listing = ", ".join(allowed) if allowed else "none"
            raise ConfigError(f"unknown key {name!r}{hint}; allowed keys here: {listing}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a section (mapping)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check value against the annotation tp (int, float, bool, str, Literal, list/tuple, dataclass)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return _build_section(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_describe(o) for o in typing.get_args(tp))}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return value
    if tp is Any:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise ConfigError(f"{key}: the config cannot hold values of type {tp}")
    if not ok:
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _build_section(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    fields = dataclasses.fields(cls)
    _reject_unknown(raw, [f.name for f in fields], f"{prefix}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields:
        if f.name not in raw:
            continue
        key = f"{prefix}.{f.name}"
        value = _coerce(raw[f.name], hints[f.name], key)
        check = f.metadata.get("check")
        if check is not None and not check(value):
            raise ConfigError(f"{key}: must be {f.metadata['allowed']}, got {value!r}")
        values[f.name] = value
    return cls(**values)


def _check_mode(key: str, metric: str, mode: str) -> None:
    """A mode that contradicts its metric (loss with max, say) would reward getting worse."""
    right = resolved_mode(metric, "auto")
    if mode not in ("auto", right):
        direction = "downwards" if right == "min" else "upwards"
        raise ConfigError(f"{key}: {metric} improves {direction}; set {key}={right}")


def _check_combinations(config: Config) -> None:
    _check_mode("eval.best_mode", config.eval.best_metric, config.eval.best_mode)
    for section in ("on_plateau", "early_stop"):
        policy = getattr(config.train, section)
        _check_mode(f"train.{section}.mode", policy.metric, policy.mode)
    plateau = config.train.on_plateau
    if plateau.patience and plateau.min_lr >= config.train.lr:
        raise ConfigError(
            f"train.on_plateau.min_lr: must be below train.lr ({config.train.lr}) or no cut could happen, "
            f"got {plateau.min_lr}"
        )
    if not config.eval.splits or len(set(config.eval.splits)) < len(config.eval.splits):
        raise ConfigError(
            f"eval.splits: list each split once, at least one (e.g. [val, train]); got {config.eval.splits}"
        )
    folds, fold = config.data.folds, config.data.fold
    if fold >= max(folds, 1):
        fix = f"set data.fold between 0 and {folds - 1}" if folds > 1 else "set data.folds to 2 or more first"
        raise ConfigError(f"data.fold: must be < data.folds ({folds}), got {fold}; {fix}")
    if config.train.warmup_steps > config.train.steps:
        raise ConfigError(
            f"train.warmup_steps: must be <= train.steps ({config.train.steps}), got {config.train.warmup_steps}"
        )
