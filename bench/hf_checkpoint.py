"""What a Hugging Face GPT-2 costs in files and in time: train.py's loop stall and write time per save, each
file against the distinct bytes it holds, and eval.py ad hoc against a plain script (torch.load(weights_only)
+ load_state_dict + the same evaluation): wall time and peak RSS, each in a fresh process.

    python -m bench.hf_checkpoint              # GPT-2 124M (12 x 768, vocabulary 50257): minutes on a CPU
    python -m bench.hf_checkpoint --smoke      # a tiny GPT-2: seconds

Needs the hf extra. Targets: eval.py <= 1.1 x the plain script in wall time and in peak RSS; every file
<= 1.02 x the distinct bytes of what it holds (tied weights once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT, add_results_option, report, results_file
from shared.protocol.layout import TrainDir, weights_name
from shared.runtime import devices

SIZES = {"124M": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}}
SMOKE = {"tiny": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}}
TARGET_TIME, TARGET_RSS, TARGET_FILE = 1.1, 1.1, 1.02
SAVED = re.compile(r"saved (\S+) \(the loop blocked ([\d.]+)s, writing took ([\d.]+)s\)")

# The same evaluation as eval.py's, written as a user would without trainval's evaluator: the task's model
# and data, the weights file read with torch.load(weights_only), then loss and the task's metrics per batch.
PLAIN = """
import sys, torch
from torch.utils.data import DataLoader
from shared.tasks.loading import build_task, load_config
config = load_config(sys.argv[1])
task = build_task(config)
model = task.build_model().eval()
model.load_state_dict(torch.load(sys.argv[2], weights_only=True)["model"])
metrics, loss, count = task.build_metrics(), 0.0, 0
with torch.inference_mode():
    for batch in DataLoader(task.eval_data(), batch_size=config.eval.batch_size):
        outputs = model(**batch)
        loss += float(outputs.loss) * len(batch["input_ids"])
        count += len(batch["input_ids"])
        for metric in metrics.values():
            metric.update(outputs, batch["labels"])
print({"loss": loss / count, **{name: metric.compute() for name, metric in metrics.items()}})
"""


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, output) of a fresh process; exits on failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def distinct_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages among `tensors`: a tied weight counts once."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def measure(name: str, model: dict, folder: Path, args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    data = {"context": 128, "batch_size": 4, "vocab_size": 2000, "train_chars": 100_000, "eval_chars": args.eval_chars}
    if args.smoke:
        data |= {"context": 32, "vocab_size": 300, "train_chars": 5000, "eval_chars": 2000}
        model |= {"n_positions": 32}
    config = {
        "task": "hf_causal_lm",
        "model": model,
        "data": data,
        "train": {"steps": args.steps, "warmup_steps": 1, "lr": 1e-4},
        "checkpoint": {"every_steps": args.every, "max_to_keep": 1},
        "eval": {"batch_size": 16},
    }
    config_path = folder / f"{name}.yaml"
    config_path.write_text(json.dumps(config))
    train_dir = TrainDir(folder / name)
    run = ["--train-dir", str(train_dir.root), *(["--threads", args.threads] if args.threads else [])]
    train_secs, train_rss, output = timed([sys.executable, "train.py", "--config", str(config_path), *run])
    saves = [(m[1], float(m[2]), float(m[3])) for m in SAVED.finditer(output)]
    if not saves:
        sys.exit(f"train.py logged no save:\n{output}")

    from shared.tasks.loading import build_task, load_config

    task = build_task(load_config(train_dir.config))
    built = task.build_model()
    params = sum(p.numel() for p in built.parameters())
    weights = distinct_bytes(list(built.state_dict().values()))
    optimizer = 2 * sum(p.numel() * p.element_size() for p in built.parameters())  # AdamW: two moments each
    step = args.steps
    checkpoint, beside = train_dir.checkpoint(step), train_dir.checkpoints / weights_name(step)
    eval_secs, eval_rss, eval_out = timed([sys.executable, "eval.py", *run, "--checkpoint", "latest", "--json"])
    plain_secs, plain_rss, _ = timed([sys.executable, "-c", PLAIN, str(train_dir.config), str(beside)])
    timed([sys.executable, "eval.py", *run, "--idle-timeout", "1"])  # the daemon, which exports best/
    best = train_dir.best / "model.safetensors"

    files = [
        ("checkpoint (weights + AdamW)", checkpoint.stat().st_size, weights + optimizer),
        ("weights file beside it", beside.stat().st_size, weights),
        ("best/model.safetensors", best.stat().st_size, weights),
    ]
    stall, write = median([s[1] for s in saves]), median([s[2] for s in saves])
    rows = [
        [name, f"{params:,}", "save: loop stall (s), median", f"{stall:.3f}", "", ""],
        [name, "", "save: write time (s), median", f"{write:.2f}", "", ""],
    ]
    for what, size, distinct in files:
        mib = f"{size / 2**20:,.2f}", f"{distinct / 2**20:,.2f}"
        rows.append([name, "", f"{what} (MiB)", *mib, ratio(size, distinct, TARGET_FILE)])
    wall = f"{eval_secs:.1f}", f"{plain_secs:.1f}", ratio(eval_secs, plain_secs, TARGET_TIME)
    rss = f"{eval_rss:,.0f}", f"{plain_rss:,.0f}", ratio(eval_rss, plain_rss, TARGET_RSS)
    rows.append([name, "", "eval.py --checkpoint latest: wall (s)", *wall])
    rows.append([name, "", "eval.py --checkpoint latest: peak RSS (MiB)", *rss])
    notes = [
        f"- {name}: {len(saves)} saves in {args.steps} steps (train.py {train_secs:.0f} s, peak RSS {train_rss:,.0f} "
        f"MiB); eval.py's metrics {json.loads(eval_out.splitlines()[-1])['metrics']}.",
    ]
    return rows, notes


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def ratio(value: float, reference: float, target: float) -> str:
    x = value / reference
    return f"{x:.3f} ({'meets' if x <= target else 'misses'} <= {target})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps")
    parser.add_argument("--every", type=int, default=2, help="a checkpoint every N steps")
    parser.add_argument("--eval-chars", type=int, default=20_000, help="held-out text (about 4 characters a token)")
    parser.add_argument("--threads", help="--threads for train.py and eval.py (default: theirs)")
    parser.add_argument("--folder", type=Path, help="where to write (default: a temp folder)")
    parser.add_argument("--smoke", action="store_true", help="a tiny GPT-2: seconds on a CPU")
    add_results_option(parser)
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else SIZES
    rows, notes = [], []
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for name, model in sizes.items():
            more_rows, more_notes = measure(name, dict(model), Path(folder), args)
            rows += more_rows
            notes += more_notes
    header = ["model", "parameters", "what", "trainval", "reference", "x reference"]
    notes.append(
        "- Reference: distinct bytes of what the file holds (tied weights once; AdamW: two moments per parameter), "
        "or the plain script (torch.load(weights_only) of the weights file + load_state_dict + the same "
        f"evaluation), each a fresh process. Targets: files <= {TARGET_FILE} x, wall and peak RSS <= "
        f"{TARGET_TIME} x."
    )
    title = "Hugging Face GPT-2: checkpoint files and ad hoc evaluation" + (" (smoke)" if args.smoke else "")
    report(title, header, rows, devices.resolve("auto"), results_file(args), "\n".join(notes))


if __name__ == "__main__":
    main()
