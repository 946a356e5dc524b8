"""The Task interface: everything train.py and eval.py need to know about one problem.

A task is a model, its training and evaluation data, and a loss. Batches are `(inputs, targets)`, each a
tensor or any nesting of dicts, lists and tuples of tensors, or a dict alone (a Hugging Face batch, whose
`labels` are the targets); train.py and eval.py move them to the device as they are and hand them back to
the task's own `forward`, `loss` and metrics. The defaults serve a Hugging Face model as it is: a dict
batch's keys become keyword arguments, and the loss is the `loss` the model returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from shared.config import DataConfig, ModelConfig
from shared.errors import UsageError
from shared.metrics.base import Metric
from shared.runtime import devices, seeding


class Keywords(dict):
    """Inputs that Task.forward passes to the model as keyword arguments: a dict batch's (a Hugging Face
    batch's `input_ids`, `attention_mask`, `labels`), or a pair's inputs a task's collate marks so."""


class Task(ABC):
    """A problem: a model, its training and evaluation data, a loss, and the metrics it is judged by.

    Subclasses may set `ModelConfig` and `DataConfig` to config sections of their own options (pydantic
    models: ModelConfig extends `shared.config.Section`, DataConfig `shared.config.DataConfig`); the
    config's `model:` and `data:` sections are checked against them. Keep datasets deterministic given
    `self.seed`: eval.py rebuilds them from the config alone.
    """

    ModelConfig: ClassVar[type] = ModelConfig
    DataConfig: ClassVar[type] = DataConfig
    # Optional: `def collate(self, items) -> (inputs, targets)`, the DataLoader's collate_fn for training
    # and evaluation alike (variable-length sequences, say). None: torch's default collate.
    collate: ClassVar[Callable[[list[Any]], Any] | None] = None
    # The metric that chooses the best checkpoint (best/, checkpoint.keep_best) and that the feedback policies
    # watch, unless the config names another: `loss` or a scalar of build_metrics(), in its own direction.
    best_metric: ClassVar[str] = "loss"

    def __init__(self, model: Any, data: Any, seed: int) -> None:
        self.model_config = model
        self.data_config = data
        self.seed = seed

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def train_data(self) -> Dataset: ...

    @abstractmethod
    def eval_data(self) -> Dataset: ...

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The mean loss over the batch, a 0-d tensor; by default the one the model computed itself (a Hugging
        Face `ModelOutput.loss`, given `labels`)."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        if not isinstance(loss, torch.Tensor):
            raise UsageError(
                f"{type(self).__name__}: the model's outputs ({type(outputs).__name__}) hold no loss; define "
                f"loss(outputs, targets) in {type(self).__name__}, or pass labels to a Hugging Face model"
            )
        return loss

    def test_data(self) -> Dataset | None:
        """A held-out test set for `eval.splits: [..., test]`; None when the task has none."""
        return None

    def split(self, batch: Any) -> tuple[Any, Any]:
        """A batch as `(inputs, targets)`: a dict batch is all `Keywords` inputs, and its `labels` (None
        without) the targets, as Hugging Face models take them; any other batch is the pair itself."""
        if isinstance(batch, Mapping):
            return Keywords(batch), batch.get("labels")
        inputs, targets = batch
        return inputs, targets

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """The model's outputs for a batch's inputs: `Keywords` go in as keyword arguments (`model(**inputs)`),
        anything else (a dict of a pair's inputs too) as one argument. Override for models that need more."""
        return model(**inputs) if isinstance(inputs, Keywords) else model(inputs)

    def build_metrics(self) -> Mapping[str, Metric]:
        """Name -> a fresh metric, for one split of one evaluation (`loss` is always measured besides)."""
        return {}

    def check_outputs(self, outputs: Any, targets: Any) -> None:
        """Called once at start with two examples' outputs: raise UsageError for outputs the metrics cannot use."""
        return None

    def check_targets(self, targets: Any) -> None:
        """Called once at start with every target of an in-memory dataset (a TensorDataset), else with two
        examples' targets: raise UsageError for targets the loss or metrics cannot use."""
        return None

    def examples(self, inputs: Any, targets: Any) -> int:
        """How many examples a batch holds: the first dimension of its first tensor (targets first)."""
        for part in (targets, inputs):
            tensor = first_tensor(part)
            if tensor is not None:
                return tensor.shape[0] if tensor.dim() else 1
        raise TypeError("a batch holds no tensor; override Task.examples to count its examples")

    def tokens(self, inputs: Any, targets: Any) -> int | torch.Tensor | None:
        """How many tokens a batch holds, for `tokens_per_sec` (a 0-d tensor counts without a host sync);
        None, the default, for tasks without tokens."""
        return None

    def export_files(self, model: nn.Module, folder: Path) -> None:
        """Files best/ holds beside the weights, for other tools: by default a Hugging Face model's config.json
        (and generation_config.json), what `from_pretrained(best_dir)` needs besides model.safetensors."""
        hf_config = getattr(model, "config", None)
        if hasattr(hf_config, "to_json_file"):
            hf_config.to_json_file(folder / "config.json")
        generation = getattr(model, "generation_config", None)
        if hasattr(generation, "to_json_file"):
            generation.to_json_file(folder / "generation_config.json")

    @property
    def channels_last(self) -> bool:
        """True for convolutional models, which run faster on CUDA with NHWC memory layout."""
        return False


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor of a nesting of dicts, lists and tuples, depth first; None when there is none."""
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def batches(task: Task, data: Dataset, batch_size: int, pin_memory: bool = False) -> Iterable[Any]:
    """`(inputs, targets)` batches in order: an in-memory TensorDataset is sliced (on its own device), any
    other dataset, or a task with its own `collate`, goes through a DataLoader."""
    if isinstance(data, TensorDataset) and task.collate is None:
        return zip(*(t.split(batch_size) for t in data.tensors), strict=True)
    return DataLoader(data, batch_size=batch_size, collate_fn=task.collate, pin_memory=pin_memory)


# Examples the start-up check sends through the model: two, not one, so a model that squeezes the batch
# dimension away still shows it; never a full batch, whose forward would cost what an evaluation step does.
CHECKED_EXAMPLES = 2


def first_examples(task: Task, data: Dataset, count: int = CHECKED_EXAMPLES) -> Any:
    """The first `count` examples as one batch, made as `batches` makes them but without a DataLoader: an
    iterated DataLoader draws its seed from the global RNG, which a resumed run must not touch."""
    count = min(count, len(data))  # type: ignore[arg-type]
    if isinstance(data, TensorDataset) and task.collate is None:
        return tuple(t[:count] for t in data.tensors)
    return (task.collate or default_collate)([data[i] for i in range(count)])


def check_model_fits(task: Task, model: nn.Module, data: Dataset, device: torch.device) -> None:
    """Two examples through the model before any work, so outputs the task's metrics cannot use (a width
    that is not the number of classes, say) are one clear UsageError at start rather than a failure at step
    1; then the targets, all of them when the data is in memory (a TensorDataset), else those two; then
    the loss, which a task that defines none takes from the model's outputs.

    The model runs in eval mode and is put back as it was, and the RNGs too (a dataset may draw as it reads
    an example): no running statistics or RNG state change, so a resumed run goes on from the RNG state its
    checkpoint restored.
    """
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), seeding.rng_untouched():
            inputs, targets = task.split(devices.to_device(first_examples(task, data), device, task.channels_last))
            outputs = task.forward(model, inputs)
    finally:
        model.train(training)
    task.check_outputs(outputs, targets)
    in_memory = isinstance(data, TensorDataset) and task.collate is None and len(data.tensors) == 2
    task.check_targets(data.tensors[1] if in_memory else targets)
    task.loss(outputs, targets)  # a model that returns no loss, in a task that defines none, is refused here
