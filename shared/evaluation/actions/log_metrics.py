"""The metrics of each split in eval.py's log, one line a split."""

from __future__ import annotations

import logging

from shared.protocol.results import EvalResult

log = logging.getLogger(__name__)


def log_metrics(result: EvalResult) -> None:
    for split, scores in result.splits.items():
        log.info("step %d %s: %s", result.step, split, " ".join(f"{k}={v:.4f}" for k, v in scores.metrics.items()))
