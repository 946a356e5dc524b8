"""What a checkpoint costs the training loop: blocking time per save and the save's total time, for
about 10M, 100M and 1B parameters with AdamW state, synchronous torch.save against train.py's
asynchronous checkpoint writer, next to the disk's measured write bandwidth.

    python -m bench.checkpoint                  # the GPU run: 10M, 100M, 1B
    python -m bench.checkpoint --smoke          # seconds on a CPU
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.common import add_results_option, report, results_file
from shared import config as cfg
from shared.checkpoints.retention import RetentionPolicy, apply_retention
from shared.checkpoints.store import save
from shared.protocol.layout import TrainDir
from shared.runtime import devices
from shared.tasks.synthetic import SyntheticData, SyntheticModel, SyntheticTask
from shared.training.checkpoint_writer import CheckpointWriter

SIZES = {
    "10M": SyntheticModel(arch="resnet", width=64),
    "100M": SyntheticModel(arch="transformer", dim=1024, layers=8),
    "1B": SyntheticModel(arch="transformer", dim=2048, layers=20),
}
SMOKE_SIZES = {"tiny": SyntheticModel(arch="resnet", width=8, blocks_per_stage=[1, 1])}


def trained_state(model_config: SyntheticModel, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model and an AdamW whose state exists (one step taken), as in a real run."""
    model = SyntheticTask(model_config, SyntheticData(), 0).build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    with devices.autocast(device, "auto"):
        model(torch.randn(8, 3, 32, 32, device=device)).float().mean().backward()
    optimizer.step()
    return model, optimizer


def disk_bandwidth(folder: Path, gigabytes: float) -> float:
    """Bytes per second for a large write with fsync, the floor under any checkpoint."""
    chunk = os.urandom(64 << 20)
    path = folder / "bandwidth.bin"
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, int(gigabytes * 1024 / 64))):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    path.unlink()
    return size / seconds


def measure(model_config: SyntheticModel, device: torch.device, folder: Path, repeats: int) -> list[object]:
    model, optimizer = trained_state(model_config, device)
    params = sum(p.numel() for p in model.parameters())

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    size = sum(t.numel() * t.element_size() for t in state()["model"].values())
    size += sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )

    sync_dir = TrainDir(folder / "sync")
    sync_secs = []
    for step in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        save(sync_dir, step, state())  # torch.save, fsync, rename: what the loop waits for
        sync_secs.append(time.perf_counter() - started)
        apply_retention(sync_dir.checkpoints, RetentionPolicy(1), None)

    async_dir = TrainDir(folder / "async")
    writer = CheckpointWriter(async_dir, cfg.CheckpointConfig(async_save=True))
    retire = functools.partial(apply_retention, async_dir.checkpoints, RetentionPolicy(1), None)
    blocked, total = [], []
    for step in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        writer.write(step, state(), retire)
        blocked.append(time.perf_counter() - started)
        writer.settle()
        total.append(time.perf_counter() - started)
    writer.close()
    shutil.rmtree(folder / "sync")
    shutil.rmtree(folder / "async")
    steady_sync, steady_blocked = min(sync_secs[1:] or sync_secs), min(blocked[1:] or blocked)
    return [
        f"{params / 1e6:,.1f}M",
        f"{size / 1e9:.2f}",
        f"{steady_sync:.3f}",
        f"{blocked[0]:.3f}",
        f"{steady_blocked:.4f}",
        f"{min(total[1:] or total):.3f}",
        f"{steady_blocked / steady_sync:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10M,100M,1B")
    parser.add_argument("--repeats", type=int, default=3, help="saves per size; the first allocates buffers")
    parser.add_argument("--folder", type=Path, help="where to write (default: a temp folder)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model: seconds on a CPU")
    add_results_option(parser)
    args = parser.parse_args()
    device = devices.resolve("auto")
    sizes = SMOKE_SIZES if args.smoke else {name: SIZES[name] for name in args.sizes.split(",")}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        bandwidth = disk_bandwidth(Path(folder), 0.0625 if args.smoke else 2.0)
        rows = [[name, *measure(model, device, Path(folder), args.repeats)] for name, model in sizes.items()]
    header = [
        "model",
        "parameters",
        "GB (weights + AdamW)",
        "sync save: loop blocked (s)",
        "async: blocked, 1st save (s)",
        "async: blocked, steady (s)",
        "async: save total (s)",
        "async blocked / sync",
    ]
    notes = (
        f"- Disk write bandwidth with fsync: {bandwidth / 1e9:.2f} GB/s. The first asynchronous save allocates "
        "its pinned buffers; later saves reuse them. Target: blocked <= 0.1 x sync at 100M and 1B."
    )
    report("Checkpoint cost", header, rows, device, results_file(args), notes)


if __name__ == "__main__":
    main()
