"""Device choice: `auto` takes CUDA when there is one; anything else is checked before any work starts.
Also autocast for a precision, and a dataset moved to the device once."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from shared.errors import ConfigError, UsageError

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"--device {name!r}: only cpu and cuda devices are supported")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def precision_for(device: torch.device, precision: str) -> str:
    """`auto` is bf16 on CUDA (its matrix units' fast path) and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def use_fast_math(device: torch.device, autotune: bool) -> None:
    """TF32 for the float32 matrix products and convolutions that autocast leaves in float32, and, with
    `autotune`, cuDNN's per-shape algorithm search: faster, but two processes may pick different
    algorithms, so the evaluator leaves it off and gives the same numbers in every process."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = autotune


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch on the device: a tensor, or any nesting of dicts, lists and tuples of tensors (other values
    pass through as they are). 4-d tensors go to NHWC layout for convolutional models on CUDA."""
    if isinstance(batch, torch.Tensor):
        if channels_last and device.type == "cuda" and batch.dim() == 4:
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple keeps its type
        return type(batch)(*(to_device(value, device, channels_last) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device, channels_last) for value in batch)
    return batch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; fp32 runs without autocast."""
    precision = precision_for(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def place(dataset: Dataset, device: torch.device, on_device: bool) -> Dataset:
    """The dataset, moved once to the device (the trainer's or the evaluator's) when `data.on_device` asks for it."""
    if not on_device:
        return dataset
    if not isinstance(dataset, TensorDataset):
        raise ConfigError(f"data.on_device: needs an in-memory TensorDataset, got a {type(dataset).__name__}")
    return TensorDataset(*(t.to(device) for t in dataset.tensors))
