"""From a config's `task:` to a Task: the class it names, the Config typed by that task's own model and
data sections, the task, and its model.

shared.config knows no task; this module is where the two meet, so the import graph has no cycle.
A task module is found where `python -m` would find it, from the folder the command runs in, as well as
among the installed packages, PYTHONPATH and the project folder (where train.py and eval.py live). The
current folder comes last, so a file there cannot shadow an installed package (docs/tasks.md).

A config may come from a train_dir someone else wrote, so the module a `module:Class` task names is found
first and imported only from where task modules live: the current folder, the project folder, PYTHONPATH,
or an installed package named in TRAINVAL_TASK_PACKAGES. Naming any installed or standard module
(`task: antigravity:X` opens a browser at import) is refused before that module's code runs.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
from pathlib import Path

import pydantic
import torch
from pydantic import Field
from torch import nn

from shared import config as cfg
from shared.errors import ConfigError
from shared.metrics.base import directions
from shared.tasks import Task

BUILTIN_TASKS = {
    "digits": "shared.tasks.digits:DigitsTask",
    "synthetic": "shared.tasks.synthetic:SyntheticTask",
    "regression": "shared.tasks.regression:RegressionTask",
    "language_model": "shared.tasks.language:LanguageModelTask",
    "span_qa": "shared.tasks.span_qa:SpanQATask",
    "hf_causal_lm": "shared.tasks.hf_causal_lm:HFCausalLMTask",  # the hf extra
}
DEFAULT_TASK = cfg.Config.model_fields["task"].default
PROJECT_FOLDER = Path(__file__).resolve().parents[2]  # the checkout: shared/ and train.py
TASK_PACKAGES_VARIABLE = "TRAINVAL_TASK_PACKAGES"  # installed packages a task may come from, comma-separated


def task_class(name: str) -> type[Task]:
    """The Task class a config's `task:` names, or ConfigError saying why it cannot be used."""
    target = BUILTIN_TASKS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"task: {name!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) "
            "nor a dotted path like mypackage.module:MyTask"
        )
    search_current_folder_last()
    if name not in BUILTIN_TASKS:  # those import only this project's own modules
        check_importable(module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"task: cannot import module {module_name!r} ({err}); run from the folder that holds it, install "
            "it, or add its folder to PYTHONPATH"
        ) from None
    if not hasattr(module, attr):
        tasks = [
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Task) and not inspect.isabstract(v)
        ]
        close = difflib.get_close_matches(attr, tasks, n=1)
        hint = f"did you mean {module_name}:{close[0]}?" if close else f"its Task classes: {', '.join(tasks) or 'none'}"
        raise ConfigError(f"task: no {attr} in {module_name} ({hint})")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task: {target!r} is not a subclass of shared.tasks.Task")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"task: {target} leaves abstract methods unimplemented ({missing}); define them in {attr}")
    _check_sections(cls, target)
    return cls


def search_current_folder_last() -> None:
    """Let a task module in the folder the command runs in be imported, as `python -m` does, but after
    everything else on sys.path: a `torch.py` or `shared/` there cannot shadow the real ones."""
    try:
        here = os.getcwd()
    except OSError:  # the folder was deleted under us: nothing to find there
        return
    if here not in sys.path:
        sys.path.append(here)


def check_importable(module_name: str) -> None:
    """ConfigError, before any of its code runs, unless `module_name` is found in the current folder, the
    project folder or a PYTHONPATH folder (not inside an installation's standard library or site-packages
    there), or its top-level package is named in TRAINVAL_TASK_PACKAGES.

    The first package on the dotted path that has code (an __init__.py, or the module itself) decides:
    everything below it lies in its folder. Namespace packages above it (folders without __init__.py, as
    `shared` is) run nothing when imported to look one level down."""
    parts = module_name.split(".")
    allowed = {name.strip() for name in os.environ.get(TASK_PACKAGES_VARIABLE, "").split(",")}
    if parts[0] in allowed:
        return
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            spec = importlib.util.find_spec(name)  # imports only the namespace packages above `name`
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ConfigError(
                f"task: cannot import module {module_name!r} (no module named {name!r}); run from the folder that "
                "holds it, install it, or add its folder to PYTHONPATH"
            )
        if spec.origin is None:  # a namespace package: its code is in the modules below
            continue
        if not _task_folder(Path(spec.origin)):
            raise ConfigError(
                f"task: module {name!r} is {spec.origin}, not in the current folder, the project folder or "
                "PYTHONPATH, so it is not imported (a config from elsewhere could run any installed module); "
                f"for an installed package of tasks, set {TASK_PACKAGES_VARIABLE}={parts[0]}"
            )
        return


def _task_folder(place: Path) -> bool:
    """Whether `place` (a module's file or package folder) is where task modules may be imported from."""
    place = Path(os.path.realpath(place))
    python_path = [p or "." for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    roots = [Path.cwd(), PROJECT_FOLDER, *map(Path, python_path)]
    paths = sysconfig.get_paths()
    installed = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    installed += [*site.getsitepackages(), site.getusersitepackages()]
    installed += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return any(_within(place, root) for root in roots) and not any(_within(place, p) for p in installed)


def _within(place: Path, folder: str | os.PathLike) -> bool:
    return place.is_relative_to(os.path.realpath(folder))


def _check_sections(cls: type[Task], target: str) -> None:
    """A task's sections must be config sections: pydantic models, so their keys and ranges are checked."""
    for name, base in (("ModelConfig", cfg.Section), ("DataConfig", cfg.DataConfig)):
        section = getattr(cls, name)
        if not (isinstance(section, type) and issubclass(section, base)):
            raise ConfigError(
                f"task: {target}.{name} must extend shared.config.{base.__name__} (a pydantic model, "
                "with Field(ge=...) for ranges); docs/config.md says how to move a dataclass over"
            )


@functools.cache
def config_class(task: type[Task]) -> type[cfg.Config]:
    """Config with `task`'s own model and data sections in place of the generic ones."""
    return pydantic.create_model(
        f"{task.__name__}Config",
        __base__=cfg.Config,
        __module__=task.__module__,
        model=(task.ModelConfig, Field(default_factory=task.ModelConfig)),
        data=(task.DataConfig, Field(default_factory=task.DataConfig)),
    )


def resolve_config(raw: object) -> cfg.Config:
    """A validated Config from a raw mapping; its `task:` chooses the model and data sections."""
    name = raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else DEFAULT_TASK
    if not isinstance(name, str):
        raise ConfigError(f"task: expected a built-in task name or module:Class, got {name!r}")
    cls = task_class(name)
    task_metrics = cfg.TaskMetrics(
        cls.best_metric, cls.__name__, lambda model, data, seed: directions(cls(model, data, seed).build_metrics())
    )
    return cfg.resolve(raw, config_class(cls), {"task_metrics": task_metrics})


def load_config(path: str | Path, overrides: list[str] = (), follow_links: bool = True) -> cfg.Config:
    """The config file at `path` with `--set` overrides laid over it, validated; `follow_links` off for a
    train_dir's config.yaml (shared.config.sources.read_yaml)."""
    return resolve_config(cfg.read_with_overrides(path, overrides, follow_links))


def suite_config(config: cfg.Config, suite: str) -> cfg.Config:
    """The config an evaluator of `suite` runs: the run's, with the suite's task (built from the same model and
    data sections) and its options in the eval section; the default suite's is the config itself. The train
    section's policies are train.py's and are left out: they name the run's task's metrics. ConfigError when
    the suite's task cannot take the run's sections, or has no metric best_metric names."""
    if suite not in config.suites.by_name:
        return config
    options, raw = config.suites.by_name[suite], config.to_dict()
    chosen = {"splits", "max_examples", "policy", "best_metric"}
    given = options.model_dump(include=chosen) | ({"batch_size": options.batch_size} if options.batch_size else {})
    raw["eval"] |= given
    raw["task"] = options.task or config.task
    for policy in ("on_plateau", "early_stop"):
        raw["train"].pop(policy)
    try:
        return resolve_config(raw)
    except ConfigError as err:
        raise ConfigError(f"suites.{suite}: {err}") from None


def build_task(config: cfg.Config) -> Task:
    cls = task_class(config.task)
    return cls(config.model, config.data, config.seed)


def build_model(task: Task, device: torch.device) -> nn.Module:
    """The task's model on `device`, or ConfigError when its sizes cannot be allocated there."""
    try:
        return task.build_model().to(device)
    except (RuntimeError, MemoryError, OverflowError, ValueError) as err:  # torch's OutOfMemoryError included
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model: {type(task).__name__} cannot build its model with {task.model_config!r} on {device} "
            f"({reason}); choose smaller sizes in the model section"
        ) from None
