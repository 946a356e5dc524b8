"""Tasks for tests/test_foreign_runs.py (named as `tests.foreign_tasks:Class` in an eval.yaml)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.tasks.hf_causal_lm import HFCausalLMTask

GATE, AT_GATE = "gate", "at-gate"


class GatedHFTask(HFCausalLMTask):
    """hf_causal_lm whose evaluation waits at a gate: while a file `gate` is beside data.eval_files[0], each
    evaluation batch touches `at-gate` there and waits for the gate to go. A test holds the evaluator in the
    middle of an evaluation (its checkpoint loaded) while the trainer goes on, and knows when it is there.
    Only evaluation is gated (inference mode): the start-up check of the model runs under no_grad."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        if torch.is_inference_mode_enabled():
            folder = Path(self.data_config.eval_files[0]).parent
            if (folder / GATE).exists():
                (folder / AT_GATE).touch()
            deadline = time.monotonic() + 600  # the tests' hang guard
            while (folder / GATE).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().forward(model, inputs)
