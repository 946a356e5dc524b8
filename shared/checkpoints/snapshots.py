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
    """Reusable host copies of a state tree (nested dicts, lists and tuples of tensors and plain values).

    Each distinct storage is copied once and the tensors are rebuilt as views of its copy, so tensors that
    share storage (tied weights: GPT-2's input embedding and output layer) still share it, and torch.save
    writes them once, as it does the live state.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}  # by the path of the first tensor seen on a storage

    def take(self, state: Any) -> tuple[Any, torch.cuda.Event | None]:
        """A copy of `state` in host memory and, for CUDA tensors, the event that marks the copies done."""
        copies: dict[tuple[torch.device, int], torch.Tensor] = {}  # this take's: storage -> its host copy
        tree = self._copy((), state, copies)
        if not any(storage_device.type == "cuda" for storage_device, _ in copies):
            return tree, None
        ready = torch.cuda.Event()
        ready.record()
        return tree, ready

    def _copy(self, path: tuple, value: Any, copies: dict[tuple[torch.device, int], torch.Tensor]) -> Any:
        if torch.is_tensor(value) and value.layout != torch.strided:  # sparse: no storage to share
            return value.detach().to("cpu", copy=True)
        if torch.is_tensor(value):
            storage = value.untyped_storage()
            key = (value.device, storage.data_ptr())
            if key not in copies:
                copies[key] = self._storage_copy(path, value, storage)
            host = copies[key]
            return torch.empty(0, dtype=value.dtype).set_(
                host.untyped_storage(), value.storage_offset(), value.shape, value.stride()
            )
        if isinstance(value, dict):
            return {key: self._copy((*path, key), item, copies) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy((*path, i), item, copies) for i, item in enumerate(value))
        return value  # plain values are immutable, or rebuilt by state_dict() at every save

    def _storage_copy(self, path: tuple, value: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
        """The bytes of `storage` copied into a (reused, pinned for CUDA) host buffer."""
        buffer = self._buffers.get(path)
        if buffer is None or buffer.numel() != storage.nbytes():
            buffer = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=value.is_cuda)
            self._buffers[path] = buffer
        source = torch.empty(0, dtype=torch.uint8, device=value.device).set_(storage)
        buffer.copy_(source, non_blocking=value.is_cuda)
        return buffer
