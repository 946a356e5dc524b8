"""What the dashboards show beyond the per-step scalars, written into the two existing runs only.

`train/` (train.py) gets the custom-scalars overview layout and the resolved config as text (its
`eval_lag` comes from shared.training.ledger_reader); `eval/` (the eval.py daemon) gets the HParams
session and the PR curves. Nothing here opens a logger of its own: in TensorBoard a new writer would mean
a new run folder (a "stray run") or two writers in one (lost points).
"""

from __future__ import annotations

import numpy as np
import yaml

from shared import config as cfg
from shared.loggers.base import HParam, Logger

# The Custom Scalars tab: "is it learning, and is it overfitting?" first (train and eval loss on one chart,
# accuracy beside it), then how training runs. Tags are regexes, so each chart shows every run with the tag.
OVERVIEW_LAYOUT = {
    "is it learning? (train vs eval)": {
        "loss: train and eval": ["Multiline", [r"^loss$"]],
        "accuracy: eval": ["Multiline", [r"^accuracy$"]],
    },
    "training": {
        "learning_rate": ["Multiline", [r"^learning_rate$"]],
        "grad_norm (before clipping)": ["Multiline", [r"^grad_norm$"]],
        "examples_per_sec": ["Multiline", [r"^examples_per_sec$"]],
        "eval_lag: train step minus newest evaluated step": ["Multiline", [r"^eval_lag$"]],
    },
}

# Sections that are hyper-parameters; checkpoint, log and eval options say how a run is observed, not trained.
HPARAM_SECTIONS = ("task", "seed", "model", "data", "train")

# One PR curve per class; past this many classes the PR Curves tab is no longer readable.
PR_CURVE_MAX_CLASSES = 20


def write_train_header(logger: Logger, config: cfg.Config, step: int) -> None:
    """At each train.py start: the overview layout (fresh runs only, so once per run) and the config.

    The config is logged at the step training (re)starts from, so a resume with changed options shows
    both versions. Flushed at once: a crash right after must not lose the layout.
    """
    if step == 0:
        logger.layout(OVERVIEW_LAYOUT)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    logger.text("config", f"```yaml\n{text}```", step)
    logger.flush()


def hparam_values(config: cfg.Config) -> dict[str, HParam]:
    """The config's hyper-parameters as the flat name -> number/string/bool map the HParams plugin takes."""
    flat = cfg.flatten(config)
    picked = {k: v for k, v in flat.items() if k.split(".")[0] in HPARAM_SECTIONS}
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v) for k, v in picked.items()}


def write_hparams(logger: Logger, config: cfg.Config) -> None:
    """Make the logger's run an HParams session with the config's hyper-parameters (once per run)."""
    logger.hparams(hparam_values(config))
    logger.flush()


def write_pr_curves(
    logger: Logger, targets: np.ndarray, probabilities: np.ndarray, class_names: list[str], step: int
) -> None:
    """One-vs-rest precision/recall curve per class, from the evaluation's class probabilities."""
    if len(class_names) > PR_CURVE_MAX_CLASSES:
        return
    for index, name in enumerate(class_names):
        logger.pr_curve(f"pr_curve/{name}", targets == index, probabilities[:, index], step)
