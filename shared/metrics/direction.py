"""Which way a metric improves. The task's metrics declare it (`higher_is_better`), and loading a config
resolves each `auto` mode from them (shared.config), so a loaded config's mode is the direction."""

from __future__ import annotations


def higher_is_better(metric: str, mode: str = "auto") -> bool:
    """`metric` improves upwards under `mode` (max/min); `auto`, left only in a config built in code
    without its task, means downwards for `loss` and upwards for everything else."""
    if mode != "auto":
        return mode == "max"
    return metric != "loss"
