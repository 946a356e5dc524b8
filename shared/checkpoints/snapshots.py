"""Asynchronous checkpoints: the training loop only copies its state into host buffers; a background
thread serializes, fsyncs and renames.

The copies are queued on the device's stream before any later step, so they hold the state as of the
snapshot even while training goes on; the writer waits on a CUDA event before reading them. The buffers
(pinned, for fast device-to-host copies) are reused from save to save, so at most one save may be in
flight: the next snapshot waits for it.
"""

from __future__ import annotations

from typing import Any

import torch


class HostSnapshot:
    """Reusable host copies of a state tree (nested dicts, lists and tuples of tensors and plain values)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, state: Any) -> tuple[Any, torch.cuda.Event | None]:
        """A copy of `state` in host memory and, for CUDA tensors, the event that marks the copies done."""
        copied_from_cuda = []
        tree = self._copy((), state, copied_from_cuda)
        if not copied_from_cuda:
            return tree, None
        ready = torch.cuda.Event()
        ready.record()
        return tree, ready

    def _copy(self, path: tuple, value: Any, copied_from_cuda: list[bool]) -> Any:
        if torch.is_tensor(value):
            buffer = self._buffers.get(path)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = torch.empty_like(value, device="cpu", pin_memory=value.is_cuda)
                self._buffers[path] = buffer
            buffer.copy_(value.detach(), non_blocking=value.is_cuda)
            if value.is_cuda:
                copied_from_cuda.append(True)
            return buffer
        if isinstance(value, dict):
            return {key: self._copy((*path, key), item, copied_from_cuda) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy((*path, i), item, copied_from_cuda) for i, item in enumerate(value))
        return value  # plain values are immutable, or rebuilt by state_dict() at every save
