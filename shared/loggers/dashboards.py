"""What the dashboards show beyond the per-step scalars, written into the two existing runs only.

`train/` (train.py) gets the custom-scalars overview layout and the resolved config as text (its
`eval_lag` comes from shared.training.ledger_reader); `eval/` (the eval.py daemon) gets the HParams
session and the artifacts (confusion matrix, PR curves). Nothing here opens a logger of its own: in
TensorBoard a new writer would mean a new run folder (a "stray run") or two writers in one (lost points).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import yaml

from shared import config as cfg
from shared.loggers.base import HParam, Logger, LogsHParams, LogsLayout, LogsPRCurves
from shared.loggers.confusion import confusion_image, confusion_markdown
from shared.metrics.base import Metric
from shared.protocol.artifacts import Artifact, ConfusionMatrix, PRCurves

# Sections that are hyper-parameters; checkpoint, log and eval options say how a run is observed, not trained.
HPARAM_SECTIONS = ("task", "seed", "model", "data", "train")


def overview_layout(metric: str) -> dict[str, Any]:
    """The Custom Scalars tab: "is it learning, and is it overfitting?" first (train and eval loss on one
    chart, the metric that chooses the best checkpoint beside it), then how training runs. Tags are
    regexes, so each chart shows every run with the tag."""
    learning = {"loss: train and eval": ["Multiline", [r"^loss$"]]}
    if metric != "loss":
        learning[f"{metric}: eval"] = ["Multiline", [f"^{re.escape(metric)}$"]]
    return {
        "is it learning? (train vs eval)": learning,
        "training": {
            "learning_rate": ["Multiline", [r"^learning_rate$"]],
            "grad_norm (before clipping)": ["Multiline", [r"^grad_norm$"]],
            "examples_per_sec": ["Multiline", [r"^examples_per_sec$"]],
            "eval_lag: train step minus newest evaluated step": ["Multiline", [r"^eval_lag$"]],
        },
    }


def write_train_header(logger: Logger, config: cfg.Config, step: int) -> None:
    """At each train.py start: the overview layout (fresh runs only, so once per run) and the config.

    The config is logged at the step training (re)starts from, so a resume with changed options shows
    both versions. Flushed at once: a crash right after must not lose the layout.
    """
    if step == 0 and isinstance(logger, LogsLayout):
        logger.layout(overview_layout(config.eval.best_metric))
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
    if isinstance(logger, LogsHParams):
        logger.hparams(hparam_values(config))
    logger.flush()


def write_artifact(logger: Logger, name: str, artifact: Artifact, step: int) -> None:
    """What an evaluation's artifact looks like on a dashboard: a confusion matrix as an image and a table,
    PR curves as one curve per class (`pr_curve/<class>`); per-class values stay in the ledger."""
    if isinstance(artifact, ConfusionMatrix):
        image = confusion_image(artifact.counts, artifact.class_names)
        if image is not None:
            logger.image(name, image, step)
        logger.text(name, confusion_markdown(artifact.counts, artifact.class_names), step)
    elif isinstance(artifact, PRCurves) and isinstance(logger, LogsPRCurves):
        for class_name, positives, negatives in zip(
            artifact.class_names, artifact.positives, artifact.negatives, strict=True
        ):
            logger.pr_curve(f"pr_curve/{class_name}", np.asarray(positives), np.asarray(negatives), step)


def prepare(build_metrics: Callable[[], Mapping[str, Metric]]) -> None:
    """Draw, to nowhere, the confusion matrix that fresh metrics give (all zeros): the frame of its class
    names (and Pillow's import) is drawn once per process, which the recorder then pays at start-up, while
    train.py starts too, and not beside the trainer's steps at the first checkpoint."""
    try:
        artifacts = [m.compute() for m in build_metrics().values() if m.higher_is_better is None]
    except Exception:  # a task's metric may need data first: then the first checkpoint draws, as before
        return
    for artifact in artifacts:
        if isinstance(artifact, ConfusionMatrix):
            confusion_image(artifact.counts, artifact.class_names)
