"""Which way a metric improves: the one place that says so, until tasks declare it with their metrics."""

from __future__ import annotations


def higher_is_better(metric: str) -> bool:
    """The default direction: `loss` improves downwards, every other metric upwards."""
    return metric != "loss"
