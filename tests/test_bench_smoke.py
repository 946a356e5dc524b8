"""Every benchmark script runs end to end in its smoke mode and appends its table where told (by default a
smoke run only prints), so none rots between the GPU runs that produce real figures. No test asserts a
timing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import RESULTS
from tests.conftest import ROOT


def smoke(module: str, *options: str) -> str:
    """`python -m <module> --smoke <options>` from the repo root; its output once it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard, not a speed bound: over 10x the slowest smoke on a busy 2-core machine (~50 s)
    )
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_smoke(module: str, results: Path, *options: str) -> str:
    """The smoke run with `--results <results>`: the file's text."""
    smoke(module, "--results", str(results), *options)
    return results.read_text()


@pytest.mark.slow
def test_latency_smoke(tmp_path: Path) -> None:
    text = run_smoke("bench.latency", tmp_path / "results.md")
    assert "## Checkpoint-to-eval latency (smoke)" in text
    assert "| mode | N | p50 ms | p95 ms | max ms |" in text
    assert "| native (" in text
    assert "| polling every 0.25 s | 3 |" in text


@pytest.mark.slow
def test_eval_speed_smoke(tmp_path: Path) -> None:
    text = run_smoke("bench.eval_speed", tmp_path / "results.md")
    assert "## Evaluation speed (smoke)" in text
    assert "| device | what | examples/s | ratio to plain |" in text
    for what in ("eval.py per checkpoint, incl. load", "eval.py evaluate only", "plain loop, best batch"):
        assert f"| cpu | {what}" in text


@pytest.mark.slow
def test_throughput_smoke(tmp_path: Path) -> None:
    """The in-process loops here; train.py alone and beside eval.py in the next test (their processes cost the
    most, so each runs once)."""
    text = run_smoke("bench.throughput", tmp_path / "results.md", "--variants", "ae")
    assert "## Training throughput" in text
    for variant in ("(a) bare loop", "(e) classic"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {variant}"))
        assert "nan" not in row and "failed" not in row, row


@pytest.mark.slow
def test_throughput_beside_an_evaluator_smoke(tmp_path: Path) -> None:
    """With a second suite's daemon beside the default one (issue 23's measurement), each suite's lag reported."""
    suites = ["--config", "configs/digits-suites.yaml", "--suite", "sampled", "--set", "suites.sampled.every_steps=20"]
    text = run_smoke("bench.throughput", tmp_path / "results.md", "--beside-evaluator", *suites)
    assert "## Training throughput beside an evaluator" in text
    (row,) = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert "nan" not in row and "evaluated: eval 2, sampled 1" in row, row
    assert re.search(r"eval [\d.]+ / [\d.]+ s, sampled [\d.]+ / [\d.]+ s", row), row
    assert "Ratio B / A: median" in text


def test_checkpoint_smoke(tmp_path: Path) -> None:
    text = run_smoke("bench.checkpoint", tmp_path / "results.md")
    assert "## Checkpoint cost" in text
    assert "| tiny |" in text
    assert "Disk write bandwidth with fsync" in text


def test_poll_cost_smoke_prints_its_table_and_leaves_bench_results_alone() -> None:
    """A smoke run checks that the script works; it is no measurement, so the committed file stays as it is."""
    committed = RESULTS.read_bytes()
    text = smoke("bench.poll_cost")
    assert RESULTS.read_bytes() == committed, "a --smoke run without --results appended to bench/RESULTS.md"
    assert "Evaluator poll cost (smoke)" in text
    assert "| what | checkpoints | polls | median ms | p95 ms | p95 < 50 ms |" in text
    assert "| eval.py poll: look + loop turn | 1,000 | 20 |" in text


@pytest.mark.slow
def test_eval_cost_smoke(tmp_path: Path) -> None:
    text = run_smoke("bench.eval_cost", tmp_path / "results.md")
    assert "## Evaluator cost per checkpoint (smoke)" in text
    assert "| part | ms per checkpoint | x bare |" in text
    for part in ("load the checkpoint", "best/ export", "TensorBoard: PR curves", "eval.py per checkpoint, unprofiled"):
        assert f"| {part} |" in text
    assert "not called" not in text, "a part names a function eval.py no longer calls"
    assert "| weights file beside it (now) | cold |" in text
    assert "## Evaluator start-up (smoke)" in text and "| eval.py | " in text


@pytest.mark.slow
def test_hf_checkpoint_smoke(tmp_path: Path) -> None:
    """Every row of the tiny GPT-2's table; those with a reference say whether their target is met."""
    text = run_smoke("bench.hf_checkpoint", tmp_path / "results.md")
    assert "## Hugging Face GPT-2: checkpoint files and ad hoc evaluation (smoke)" in text
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if line.startswith("| tiny |")}
    judged = [
        f"{file} (MiB)" for file in ("checkpoint (weights + AdamW)", "weights file beside it", "best/model.safetensors")
    ]
    judged += [f"eval.py --checkpoint latest: {what}" for what in ("wall (s)", "peak RSS (MiB)")]
    assert set(rows) == {"save: loop stall (s), median", "save: write time (s), median", *judged}, rows
    assert all(re.search(r"\| [\d.]+ \((meets|misses) <= 1\.\d+\) \|$", rows[what]) for what in judged), rows
