"""Options: YAML files and `--set section.key=value` overrides, validated into pydantic models, and the
copy saved into the train_dir that eval.py rebuilds the model from.

Every bad key, type or value raises `ConfigError` naming the key and what is allowed; the CLIs turn it
into one line on stderr and exit code 2. The package knows no task: shared.tasks.loading reads `task:`
and validates the whole config with that task's model and data sections (docs/config.md).

- schema: every section, its options and their ranges;
- sources: YAML files, overrides, the saved config.yaml;
- validation: a raw mapping to a Config, pydantic's errors to one line;
- identity: what a train_dir keeps for life, and what a later start may change.
"""

from shared.config.identity import (
    IDENTITY_KEYS,
    RUNTIME_KEYS,
    check_eval_only,
    check_same_identity,
    differences,
    flatten,
)
from shared.config.schema import (
    LOSS,
    MAX_COUNT,
    MAX_SECS,
    CheckpointConfig,
    Config,
    Count,
    DataConfig,
    EarlyStopConfig,
    EvalConfig,
    Fraction,
    HoldoutData,
    LogConfig,
    Metric,
    ModelConfig,
    NonNegative,
    PlateauConfig,
    PositiveCount,
    Seconds,
    Section,
    Seed,
    SuiteConfig,
    Suites,
    TaskMetrics,
    TrainConfig,
)
from shared.config.sources import apply_overrides, parse_yaml, read_with_overrides, read_yaml, save, to_yaml
from shared.config.validation import resolve
from shared.errors import ConfigError

__all__ = [
    "IDENTITY_KEYS",
    "LOSS",
    "MAX_COUNT",
    "MAX_SECS",
    "RUNTIME_KEYS",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "Count",
    "DataConfig",
    "EarlyStopConfig",
    "EvalConfig",
    "Fraction",
    "HoldoutData",
    "LogConfig",
    "Metric",
    "ModelConfig",
    "NonNegative",
    "PlateauConfig",
    "PositiveCount",
    "Seconds",
    "Section",
    "Seed",
    "SuiteConfig",
    "Suites",
    "TaskMetrics",
    "TrainConfig",
    "apply_overrides",
    "check_eval_only",
    "check_same_identity",
    "differences",
    "flatten",
    "parse_yaml",
    "read_with_overrides",
    "read_yaml",
    "resolve",
    "save",
    "to_yaml",
]
