"""Evaluation suites: the default one (the `eval` section, in eval/) and each of the config's `suites:`
(in eval-<name>/), each with its own ledger, claims, pending outcomes, TensorBoard run and schedule.

`suites(train_dir, config)` is the one list both sides read: eval.py runs one of them (`--suite NAME`),
train.py's retention keeps each checkpoint until every suite whose schedule selects it has recorded it,
and the status view reports them all. A named suite's daemon writes its options as it runs them into
`eval-<name>/suite.json` when it joins, so a suite added after training (eval.py's `--set suites.NAME...`)
is known to a train.py that never had it in its config.yaml, with the schedule it really runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from shared import config as cfg
from shared.checkpoints.schedule import POLICIES, Schedule
from shared.errors import UsageError
from shared.protocol import numbers
from shared.protocol.files import RECORD_BYTES, NotAFile, read_file, write_atomic
from shared.protocol.layout import DEFAULT_SUITE, TrainDir, suite_of_folder

SUITE_RECORD = "suite.json"  # in eval-<name>/: the options its daemon runs


@dataclass(frozen=True)
class Suite:
    """One suite: its name, its places on disk (`places.results` the ledger, `places.claims`, `places.pending`,
    `places.eval_run` its TensorBoard run, `places.split_run(split)` the others, `places.best`), which steps it
    selects and in what order it takes them (`schedule`), and how many unevaluated checkpoints train.py keeps
    for it. `options` is its SuiteConfig (None for the default suite, whose options are the eval section)."""

    name: str
    places: TrainDir
    schedule: Schedule
    max_unevaluated: int
    options: cfg.SuiteConfig | None = None

    @property
    def default(self) -> bool:
        return self.name == DEFAULT_SUITE


def default_suite(train_dir: TrainDir, config: cfg.Config) -> Suite:
    schedule = POLICIES[config.eval.policy]()
    return Suite(DEFAULT_SUITE, train_dir.for_suite(DEFAULT_SUITE), schedule, config.checkpoint.max_unevaluated)


def named_suite(train_dir: TrainDir, config: cfg.Config, name: str, options: cfg.SuiteConfig) -> Suite:
    schedule = POLICIES[options.policy](options.every_steps, options.start_step, f"suites.{name}.policy")
    unevaluated = config.checkpoint.max_unevaluated if options.max_unevaluated is None else options.max_unevaluated
    return Suite(name, train_dir.for_suite(name), schedule, unevaluated, options)


def suites(train_dir: TrainDir, config: cfg.Config) -> dict[str, Suite]:
    """Every suite of this train_dir by name: the default first, then the config's, then those only found on
    disk (a suite added through eval.py's --set); a suite on disk runs the options its record holds."""
    found = {DEFAULT_SUITE: default_suite(train_dir, config)}
    found |= {name: named_suite(train_dir, config, name, options) for name, options in config.suites.by_name.items()}
    for name, options in recorded_suites(train_dir).items():
        found[name] = named_suite(train_dir, config, name, options)
    return found


def find_suite(train_dir: TrainDir, config: cfg.Config, name: str) -> Suite:
    """The suite `name` of the config (its own, or one --set/--config added); UsageError naming the known ones."""
    if name == DEFAULT_SUITE:
        return default_suite(train_dir, config)
    if name not in config.suites.by_name:
        known = ", ".join([DEFAULT_SUITE, *config.suites.by_name])
        raise UsageError(
            f"--suite {name}: no such suite in the config (its suites: {known}); add it to config.yaml's suites: "
            f"section, or here with --set suites.{name}.every_steps=N (or --config FILE)"
        )
    return named_suite(train_dir, config, name, config.suites.by_name[name])


def record_suite(suite: Suite) -> None:
    """Write the named suite's options (as its daemon runs them) into its folder, for train.py's retention."""
    if suite.options is not None:
        text = numbers.dumps(suite.options.model_dump(), sort_keys=True) + "\n"
        write_atomic(suite.places.eval_run / SUITE_RECORD, text.encode())


def recorded_suites(train_dir: TrainDir) -> dict[str, cfg.SuiteConfig]:
    """The named suites whose daemons joined this train_dir, by name, with the options they recorded; a record
    that cannot be read (being written, damaged) is left out until it can."""
    try:
        names = sorted(os.listdir(train_dir.root))
    except FileNotFoundError:
        return {}
    found = {}
    for name in filter(None, map(suite_of_folder, names)):
        try:
            raw = json.loads(read_file(train_dir.for_suite(name).eval_run / SUITE_RECORD, RECORD_BYTES))
            found[name] = cfg.SuiteConfig.model_validate(raw)
        except (OSError, NotAFile, ValueError):  # pydantic's ValidationError is a ValueError
            continue
    return found
