"""Every option, its type and its range, as pydantic models: one model per config section.

Each section is a `Section`: unknown keys are refused, types are strict (no `true` for an integer, no
`'3'` for a number), and no float may be inf or NaN. Ranges are `Field(ge=..., le=...)` constraints,
which the loader turns into one line naming the key and what is allowed (shared/config/validation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SerializeAsAny, ValidationInfo, model_validator

from shared.errors import ConfigError
from shared.protocol.layout import DEFAULT_SUITE, SUITE_NAME_RE

# Upper bounds: beyond them a value is a typo, or breaks something below the config.
MAX_COUNT = 2**31 - 1  # sizes and counts: C ints in torch and the DataLoader hold 31 bits
MAX_STEP = 999_999_999  # checkpoint names hold nine digits of step (shared/protocol/layout.py)
MAX_SEED = 2**32 - 1  # numpy's seed range; the seeds derived from it stay within torch's 64 bits
MAX_SECS = 30 * 24 * 3600.0  # durations: 30 days (1e300 s overflows the clocks that deadlines use)
MAX_WORKERS = 256  # DataLoader worker processes

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveCount = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECS)]

# `loss`, or a metric the task's build_metrics() declares: validated with its task (TaskMetrics), the config
# checks the name and records which way it improves (its higher_is_better). Left unset (null), eval.best_metric
# is the task's own (Task.best_metric) and a policy's metric is eval.best_metric: one metric says what "better" is.
Metric = str
Split = Literal["val", "train", "test"]
LOSS = "loss"  # always measured, whatever the task: its own loss, averaged over the examples; improves downwards


@dataclass(frozen=True)
class TaskMetrics:
    """What a config is validated against (pydantic's validation context, `{"task_metrics": ...}`, given by
    shared.tasks.loading): the task's own best metric, and which way each metric it declares improves."""

    best_metric: str
    declared_by: str  # the task class's name, for the message when eval.best_metric is left to it
    # (model, data, seed) -> {metric: higher_is_better} for loss and each scalar metric the task declares
    directions: Callable[[Any, Any, int], dict[str, bool]]


class Section(BaseModel):
    """A config section: strict types, no unknown keys, finite floats. Tasks subclass it for their own."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())


class Watched(Section):
    """A section naming a metric to watch, and which way it improves: resolved once, when the whole config is
    validated with its task's metrics (Config._resolve_metrics). A section built in code without a task has
    only its mode to go by, or `loss`, which always improves downwards."""

    _higher_is_better: bool | None = PrivateAttr(default=None)

    def improves_upwards(self, metric: str) -> bool:
        """Whether `metric` (this section's) improves upwards; ConfigError when nothing says which way."""
        mode = getattr(self, "mode", "auto")
        if self._higher_is_better is not None:
            return self._higher_is_better
        if mode != "auto" or metric == LOSS:
            return mode == "max"
        raise ConfigError(f"{metric}: which way it improves is unknown without its task; set the mode (min or max)")


class ModelConfig(Section):
    """The model section of a task that has no model options."""


class DataConfig(Section):
    """Options every task's data section has; a task subclasses this to add its own."""

    batch_size: PositiveCount = Field(64, description="examples per training step (per process under torchrun)")
    num_workers: int = Field(
        0, ge=0, le=MAX_WORKERS, description="DataLoader worker processes, for file-backed data; 0: load in the loop"
    )
    on_device: bool = Field(
        False, description="keep an in-memory (TensorDataset) training set on the training device: no copy per step"
    )
    folds: Count = Field(0, description="cross-validation: K folds of the training set; 0 or 1: off")
    fold: Count = Field(0, description="the held-out fold (the `val` split), 0 <= fold < folds")


class HoldoutData(DataConfig):
    """The data section of a task that holds out a fixed, seeded fraction of one bundled dataset for `val`."""

    val_fraction: float = Field(0.2, ge=0.05, le=0.5, description="the fraction of the dataset held out for `val`")
    split_seed: Seed = Field(0, description="scikit-learn's random_state for the train/validation split")


class PlateauConfig(Watched):
    """train.on_plateau: cut the LR when an evaluation metric stops improving (Keras ReduceLROnPlateau)."""

    metric: Metric | None = Field(None, description="`loss` or a metric the task declares; null: eval.best_metric")
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="auto: the metric's own direction (min for loss); another is refused"
    )
    split: Split = Field("val", description="which evaluation split feeds it: one of eval.splits")
    patience: Count = Field(0, description="evaluations without improvement before a cut; 0 turns it off")
    factor: float = Field(0.1, gt=0, lt=1, description="what each cut multiplies the LR by")
    min_delta: NonNegative = Field(1e-4, description="a smaller change is no improvement")
    cooldown: Count = Field(0, description="evaluations after a cut before counting again")
    min_lr: NonNegative = Field(0.0, description="cuts stop once train.lr x multiplier is this low")


class EarlyStopConfig(Watched):
    """train.early_stop: stop when an evaluation metric stops improving (Keras EarlyStopping)."""

    metric: Metric | None = Field(None, description="`loss` or a metric the task declares; null: eval.best_metric")
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="auto: the metric's own direction (min for loss); another is refused"
    )
    split: Split = Field("val", description="which evaluation split feeds it: one of eval.splits")
    patience: Count = Field(0, description="evaluations without improvement before stopping; 0 turns it off")
    min_delta: NonNegative = Field(0.0, description="a smaller change is no improvement")


class TrainConfig(Section):
    steps: int = Field(1000, ge=1, le=MAX_STEP, description="optimizer steps in all; raise it on resume to go on")
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = Field(
        "adamw", description="torch.optim's; adamw suits most models with the default lr"
    )
    lr: float = Field(
        1e-3, gt=0, description="the peak learning rate (after warmup); sgd usually wants more (0.01 to 0.1)"
    )
    weight_decay: NonNegative = Field(0.0, description="decoupled for adamw, L2 in the gradient for the others")
    momentum: Fraction = Field(0.9, description="sgd's momentum and rmsprop's; adam and adamw ignore it")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after warmup: cosine decay to lr x min_lr_ratio at the last step, or constant"
    )
    warmup_steps: int = Field(0, ge=0, le=MAX_STEP, description="linear warmup from 0 to lr; at most train.steps")
    min_lr_ratio: Fraction = Field(0.0, description="where the cosine schedule ends, as a fraction of lr")
    grad_clip_norm: NonNegative = Field(0.0, description="clip the global gradient norm to this; 0 turns it off")
    grad_accum_steps: PositiveCount = Field(
        1, description="micro-batches per optimizer step: a larger effective batch in the same memory"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 elsewhere; fp16 adds a gradient scaler"
    )
    compile: bool = Field(False, description="torch.compile the model for training: faster steps, a slower start")
    nan_policy: Literal["stop", "skip_step"] = Field(
        "stop", description="on a NaN/Inf loss or gradient norm: exit (code 1), or skip that step's update"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: replicate (DDP) or shard (FSDP2) the model (docs/distributed.md)"
    )
    on_plateau: PlateauConfig = Field(
        default_factory=PlateauConfig, description="cut the LR when an evaluation metric stops improving"
    )
    early_stop: EarlyStopConfig = Field(
        default_factory=EarlyStopConfig, description="stop when an evaluation metric stops improving"
    )
    feedback_suite: str = Field(
        DEFAULT_SUITE,
        description="the evaluation suite whose results on_plateau and early_stop act on: eval (the eval section), "
        "or one of suites: that evaluates with the run's own task",
    )
    max_eval_lag: Count | None = Field(
        None,
        description="wait at a save while more than this many checkpoints are not evaluated yet "
        "(docs/protocol.md); null: never wait",
    )


class CheckpointConfig(Section):
    every_steps: int = Field(100, ge=0, le=MAX_STEP, description="save every N steps; 0: only by time and at the end")
    every_secs: Seconds = Field(0.0, description="save every N seconds as well; 0: only by steps and at the end")
    max_to_keep: PositiveCount = Field(5, description="the newest checkpoints kept; older ones are deleted")
    keep_every_n_steps: int = Field(
        0, ge=0, le=MAX_STEP, description="also keep every checkpoint at a multiple of N steps; 0: none extra"
    )
    max_unevaluated: Count = Field(
        20, description="keep checkpoints the evaluator has not reached yet, up to this many (docs/protocol.md)"
    )
    keep_best: Count = Field(0, description="also keep the N best by eval.best_metric; 0: none")
    max_save_failures: PositiveCount = Field(
        3, description="failed saves in a row (a full disk, say) before train.py exits; 1: at the first"
    )
    async_save: bool = Field(
        True, description="the loop only snapshots; a background thread writes the file (docs/protocol.md)"
    )


class LogConfig(Section):
    every_steps: int = Field(10, ge=1, le=MAX_STEP, description="write the training summaries every N steps")
    backends: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="where summaries go (docs/logging.md); mlflow needs .venv/bin/pip install -e '.[mlflow]'",
    )
    mlflow_tracking_uri: str = Field(
        "", description="the MLflow server, e.g. http://127.0.0.1:5000; empty: $MLFLOW_TRACKING_URI"
    )


class EvalConfig(Watched):
    batch_size: PositiveCount = Field(
        16,
        description="examples per evaluation batch: fits a 124M-parameter language model (1024 tokens of 50k-way "
        "logits an example) beside its trainer on a 24 GB GPU; a small classifier evaluates faster with more "
        "(configs/digits.yaml: 512)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 elsewhere")
    best_metric: Metric | None = Field(
        None,
        description="the metric that chooses best/, in its own direction (eval.best_mode was that); null: the "
        "task's own Task.best_metric (accuracy for a classifier, r2 for regression, perplexity for "
        "language_model; loss for a task that names none)",
    )
    rescan_secs: float = Field(
        5.0, gt=0, le=MAX_SECS, description="rescan the train_dir this often even without a file event"
    )
    policy: Literal["all", "latest"] = Field(
        "all", description="latest: when behind, skip to the newest checkpoint (recorded as skipped)"
    )
    claim_timeout_secs: float = Field(
        60.0,
        ge=1,
        le=MAX_SECS,
        description="several evaluators on one train_dir: a claim not refreshed for this long is taken over",
    )
    splits: list[Split] = Field(
        default_factory=lambda: ["val"],
        description="evaluated at every checkpoint, each into its own TensorBoard run; the first scores best_metric",
    )
    max_examples: Count = Field(0, description="> 0: a fixed subset of each split, for speed; 0: all")

    # config.yaml files before 2026-12 hold `best_mode`, which could only be what best_metric implies: kept
    # here until the config is checked against its task (Config._resolve_metrics), never saved.
    _given_best_mode: Any = PrivateAttr(default=None)

    @property
    def best_higher_is_better(self) -> bool:
        """Whether best_metric improves upwards (the task's metric says)."""
        return self.improves_upwards(self.best_metric)

    @property
    def best_mode(self) -> str:
        """max or min: the direction in which best_metric improves."""
        return "max" if self.best_higher_is_better else "min"

    @model_validator(mode="wrap")
    @classmethod
    def _drop_best_mode(cls, raw: Any, handler: Callable[[Any], EvalConfig]) -> EvalConfig:
        """An old file's `best_mode` is checked against best_metric's direction once that is known."""
        if not (isinstance(raw, dict) and "best_mode" in raw):
            return handler(raw)
        raw = dict(raw)
        mode = raw.pop("best_mode")
        if raw.get("best_metric") is None:  # it was accuracy then; now the task's own, which this model cannot know
            raise ConfigError("eval.best_mode: drop it; set eval.best_metric, whose direction it was derived from")
        section = handler(raw)
        section._given_best_mode = mode
        return section


class SuiteConfig(Watched):
    """An evaluation suite beside the default one (`eval`): its own data, schedule and results (eval-NAME/), run by
    `eval.py --suite NAME` (docs/evaluation.md). Unset keys take the eval section's value."""

    task: str | None = Field(
        None,
        description="a Task class (module:Class, or a built-in name) that builds the run's model from the same "
        "model and data sections, with its own evaluation data and metrics; null: the run's own task",
    )
    splits: list[Split] = Field(
        default_factory=lambda: ["val"],
        description="evaluated at each selected checkpoint, each into its own TensorBoard run (eval-NAME, "
        "eval-NAME_SPLIT); the first scores best_metric",
    )
    max_examples: Count = Field(0, description="> 0: a fixed subset of each split, for speed; 0: all")
    batch_size: PositiveCount | None = Field(None, description="examples per evaluation batch; null: eval.batch_size")
    every_steps: int = Field(
        1, ge=1, le=MAX_STEP, description="evaluate the checkpoints whose step is a multiple of this (1: every one)"
    )
    start_step: int = Field(0, ge=0, le=MAX_STEP, description="evaluate no checkpoint before this step")
    policy: Literal["all", "latest"] = Field(
        "all", description="latest: when behind, skip to the newest selected checkpoint (recorded as skipped)"
    )
    max_unevaluated: Count | None = Field(
        None,
        description="train.py keeps up to this many selected checkpoints this suite has not reached; "
        "null: checkpoint.max_unevaluated",
    )
    best_metric: Metric | None = Field(
        None, description="the metric that ranks best-NAME/ and the policies fed by this suite; null: its task's own"
    )
    export_best: bool = Field(False, description="export this suite's best checkpoint to best-NAME/")


class Suites(Section):
    """suites: more evaluation suites, by name (lowercase letters, digits, `-`), each a suites.NAME section; the eval
    section is the default suite. A section of its own rather than a dict, so every reader of the schema walks it
    as any other section."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, protected_namespaces=())
    __pydantic_extra__: dict[str, SuiteConfig] = Field(init=False)

    @property
    def by_name(self) -> dict[str, SuiteConfig]:
        return dict(self.__pydantic_extra__ or {})


class Config(Section):
    """The whole config. The loader uses a subclass whose model and data are the task's own sections."""

    task: str = Field("digits", description="a built-in task's name, or module:Class of your own (docs/tasks.md)")
    seed: Seed = Field(0, description="seeds the model's initialisation, the data order and the folds; kept for life")
    model: SerializeAsAny[Section] = Field(default_factory=ModelConfig)
    data: SerializeAsAny[DataConfig] = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    suites: Suites = Field(default_factory=Suites, description="more evaluation suites (docs/evaluation.md)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        """Options that are fine alone but not together; ConfigError passes through pydantic as it is."""
        for section in ("on_plateau", "early_stop"):
            policy = getattr(self.train, section)
            if policy.patience and policy.split not in self.eval.splits and self.train.feedback_suite == DEFAULT_SUITE:
                raise ConfigError(
                    f"train.{section}.split: {policy.split!r} is not one of eval.splits {self.eval.splits}; "
                    f"set train.{section}.split to one of them, or add {policy.split} to eval.splits"
                )
        self._check_feedback_suite()
        plateau = self.train.on_plateau
        if plateau.patience and plateau.min_lr >= self.train.lr:
            raise ConfigError(
                f"train.on_plateau.min_lr: must be below train.lr ({self.train.lr}) or no cut could happen, "
                f"got {plateau.min_lr}"
            )
        if not self.eval.splits or len(set(self.eval.splits)) < len(self.eval.splits):
            raise ConfigError(
                f"eval.splits: list each split once, at least one (e.g. [val, train]); got {self.eval.splits}"
            )
        for name, suite in self.suites.by_name.items():
            if not SUITE_NAME_RE.match(name) or name == DEFAULT_SUITE:
                raise ConfigError(
                    f"suites.{name}: a suite's name is lowercase letters, digits and `-` (it names the folder "
                    f"eval-NAME/), at most 40, and not {DEFAULT_SUITE!r} (the eval section's); rename it"
                )
            if not suite.splits or len(set(suite.splits)) < len(suite.splits):
                raise ConfigError(
                    f"suites.{name}.splits: list each split once, at least one (e.g. [val, test]); got {suite.splits}"
                )
        folds, fold = self.data.folds, self.data.fold
        if fold >= max(folds, 1):
            fix = f"set data.fold between 0 and {folds - 1}" if folds > 1 else "set data.folds to 2 or more first"
            raise ConfigError(f"data.fold: must be < data.folds ({folds}), got {fold}; {fix}")
        if self.train.warmup_steps > self.train.steps:
            raise ConfigError(
                f"train.warmup_steps: must be <= train.steps ({self.train.steps}), got {self.train.warmup_steps}"
            )
        return self

    def _check_feedback_suite(self) -> None:
        """train.feedback_suite names a suite that exists and evaluates each policy's split with the run's task
        (the policies' metrics are checked against it)."""
        name = self.train.feedback_suite
        if name == DEFAULT_SUITE:
            return
        suite = self.suites.by_name.get(name)
        if suite is None or suite.task is not None:
            why = "no such suite in suites:" if suite is None else "it has a task of its own"
            raise ConfigError(
                f"train.feedback_suite: {name!r}: {why}; name eval or a suite of suites: that evaluates with the "
                "run's own task"
            )
        for section in ("on_plateau", "early_stop"):
            policy = getattr(self.train, section)
            if policy.patience and policy.split not in suite.splits:
                raise ConfigError(
                    f"train.{section}.split: {policy.split!r} is not one of suites.{name}.splits {suite.splits}; "
                    f"set train.{section}.split to one of them, or add {policy.split} to suites.{name}.splits"
                )

    @model_validator(mode="after")
    def _resolve_metrics(self, info: ValidationInfo) -> Config:
        """Validated with its task's metrics (TaskMetrics as the context): the metrics left unset become the
        task's best metric (eval.best_metric) and eval.best_metric (a policy's), here once for every reader
        (best/, keep_best, the feedback policies, dashboards, summaries); every metric must be `loss` or one the
        task declares, and each watching section records which way its metric improves (a contradicting mode
        is refused)."""
        if (task := (info.context or {}).get("task_metrics")) is None:
            return self
        upwards = task.directions(self.model, self.data, self.seed)
        best_key = "eval.best_metric"
        if self.eval.best_metric is None:
            self.eval.best_metric = task.best_metric
            best_key = f"{task.declared_by}.best_metric (eval.best_metric unset)"
        watched = [(best_key, "eval.best_mode", self.eval, self.eval.best_metric, self.eval._given_best_mode)]
        for name in ("on_plateau", "early_stop"):
            policy = getattr(self.train, name)
            policy.metric = policy.metric or self.eval.best_metric
            watched.append((f"train.{name}.metric", f"train.{name}.mode", policy, policy.metric, policy.mode))
        for metric_key, mode_key, section, metric, mode in watched:
            if metric not in upwards:
                raise ConfigError(
                    f"{metric_key}: task {self.task} has no metric {metric!r}; its metrics: {', '.join(upwards)}"
                )
            right = "max" if upwards[metric] else "min"
            if section is self.eval and mode not in (None, right):
                raise ConfigError(
                    f"eval.best_mode: {metric} improves {'downwards' if right == 'min' else 'upwards'}, so "
                    f"best_mode={right} is implied; drop eval.best_mode (it is derived from eval.best_metric)"
                )
            if mode not in ("auto", None, right):
                direction = "upwards" if right == "max" else "downwards"
                raise ConfigError(f"{mode_key}: {metric} improves {direction}; set {mode_key}={right}")
            section._higher_is_better = upwards[metric]
        self.eval._given_best_mode = None  # checked: the config equals one loaded from a file without it
        return self
