"""Tasks: the general `Task` interface (`base`), `ClassificationTask` (`classification`) and the built-in
tasks (digits, synthetic, regression, language_model, span_qa, hf_causal_lm).

A task is chosen in the config by a built-in name (`task: digits`) or a dotted path to a class of your
own (`task: mypackage.module:MyTask`); shared/tasks/loading.py finds it. docs/tasks.md shows complete ones.
"""

from __future__ import annotations

from shared.tasks.base import Keywords, Task
from shared.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask", "Keywords", "Task"]
