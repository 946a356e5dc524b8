"""Every bad input at either command line: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import config as cfg
from shared.protocol.layout import TrainDir, checkpoint_name
from shared.tasks.loading import load_config
from tests.conftest import process_starter
from tests.warm_cli import WarmCli

pytestmark = [pytest.mark.slow, pytest.mark.long]

# (script, arguments with {tmp} for the test's folder, words the one error line must contain); each train.py
# gets a train_dir of its own, which it must not create.
CASES = [
    ("eval.py", "--train-dir {tmp}/missing --checkpoint latest", "does not exist"),
    ("eval.py", "--train-dir {tmp}/empty --checkpoint latest", "not a train_dir (no config.yaml); point --train"),
    ("train.py", "--train-dir {tmp}/empty", "has no config.yaml to resume from; pass --config"),
    ("train.py", "--train-dir {tmp}/a-file --config configs/digits.yaml", "is a file, not a folder"),
    ("train.py", "--train-dir {tmp}/t1 --config configs/digits.yaml --device cuda:3", "--device cuda:3"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint latest --device cuda:3", "--device cuda:3"),
    ("train.py", "--train-dir {tmp}/t2 --config configs/digits.yaml --device mps", "only cpu and cuda"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint latest --device gpu0", "is not a device"),
    ("train.py", "--train-dir {tmp}/t3 --config {tmp}/not-yaml.yaml", "is not valid YAML"),
    ("train.py", "--train-dir {tmp}/t4 --config {tmp}/missing.yaml", "does not exist"),
    ("train.py", "--train-dir {tmp}/t14 --config configs/digit.yaml", "(did you mean configs/digits.yaml?)"),
    ("eval.py", "--train-dir {tmp}/run --suite nope", "--suite nope: no such suite in the config (its suites: eval)"),
    ("eval.py", "--train-dir {tmp}/run --suite d --set suites.d.every_steps=0", "suites.d.every_steps: "),
    ("train.py", "--train-dir {tmp}/t20 --config configs/digits.yaml --set suites.Big.policy=all", "suites.Big: a"),
    ("train.py", "--train-dir {tmp}/t21 --config configs/digits.yaml --set train.feedback_suite=x", "suite: 'x'"),
    ("train.py", "--train-dir {tmp}/t15 --config {tmp}/typo.yaml", "unknown key 'trian' (did you mean train?)"),
    ("train.py", "--train-dir {tmp}/t16 --config {tmp}/misplaced.yaml", "(did you mean data.batch_size or eval.batch"),
    ("train.py", "--train-dir {tmp}/t5 --config configs/digits.yaml --set task=nope.mod:Task", "cannot import module"),
    ("train.py", "--train-dir {tmp}/t6 --config configs/digits.yaml --set train.lrr=1", "unknown key 'train.lrr'"),
    ("train.py", "--train-dir {tmp}/t17 --config configs/digits.yaml --set lr=0.1", "'lr' (did you mean train.lr?)"),
    ("train.py", "--train-dir {tmp}/t7 --config configs/digits.yaml --set train.strategy=fsdp", "needs torchrun"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint {tmp}/outside.pt", "is outside --train-dir"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint best", "no best checkpoint yet"),
    ("eval.py", "--train-dir {tmp}/stepped --checkpoint 1500", "no checkpoint of step 1500; its steps: 100, 200; give"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint latest --set model.channels=8", "model.channels: 32 -> 8"),
    ("train.py", "--train-dir {tmp}/t9 --config configs/digits.yaml --set data.folds=2 --set data.fold=2", "data.fold"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint latest --set eval.splits=[val,nope]", "eval.splits[1]"),
    ("eval.py", "--train-dir {tmp}/run --set eval.splits=[val,test]", "has no test_data()"),
    ("eval.py", "--train-dir {tmp}/run --threads 0", "--threads '0': give a whole number >= 1, or share"),
    ("train.py", "--train-dir {tmp}/t10 --config configs/digits.yaml --threads many", "--threads 'many'"),
    ("eval.py", "--summarize {tmp}/empty", "not a train_dir"),
    ("eval.py", "--train-dir {tmp}/empty --status --json", "not a train_dir (no config.yaml); point --train"),
    ("eval.py", "--train-dir {tmp}/missing --status", "does not exist"),
    ("eval.py", "--train-dir {tmp}/run --status --checkpoint 100", "--status reads what was evaluated; leave out"),
    ("eval.py", "--summarize {tmp}/run", "no evaluated checkpoint"),
    ("train.py", "--train-dir {tmp}/t10 --config configs/digits.yaml --set task=tests.custom_task:Nope", "no Nope in"),
    (
        "train.py",
        "--train-dir {tmp}/t11 --config configs/digits.yaml --set task=tests.broken_tasks:UnfinishedTask",
        "leaves abstract methods unimplemented (build_model, eval_data, train_data)",
    ),
    ("train.py", "--train-dir {tmp}/t12 --config configs/digits.yaml --set model.hidden=2147483647", "cannot build"),
    ("train.py", "--train-dir {tmp}/t13 --config {tmp}/latin1.yaml", "is not UTF-8 text (byte 0xe9"),
    ("train.py", "--train-dir {tmp}/run --set seed=1", "seed: 0 -> 1"),
    ("eval.py", "--train-dir {tmp}/run --checkpoint latest --set train.lr=0.1", "eval section only (train.lr: 0.003"),
    ("eval.py", "--train-dir {tmp}/run --poll -1", "argument --poll: must be between 0 and 2592000, got '-1'"),
    # another trainer's run: eval.yaml's source: section (docs/foreign-runs.md)
    ("eval.py", "--train-dir {tmp}/empty --config {tmp}/foreign.yaml --set source.format=hff", "source.format: one of"),
    ("eval.py", "--train-dir {tmp}/empty --config {tmp}/foreign.yaml --set source.pattern=a.pt", "{step} once"),
    ("eval.py", "--train-dir {tmp}/empty --config {tmp}/foreign.yaml --set source.patern=x", "(did you mean pattern?)"),
    ("eval.py", "--train-dir {tmp}/run --results-dir {tmp}/results", "--results-dir goes with another trainer's run"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "not-yaml.yaml").write_text("train: [steps: 10\n")
    (tmp_path / "outside.pt").write_bytes(b"anything")
    (tmp_path / "latin1.yaml").write_bytes("train:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"))
    (tmp_path / "typo.yaml").write_text("trian: {lr: 0.1}\n")
    (tmp_path / "misplaced.yaml").write_text("train: {batch_size: 8}\n")
    (tmp_path / "foreign.yaml").write_text("task: regression\nsource: {format: files, pattern: 'model_{step}.pt'}\n")
    for name, steps in (("run", ()), ("stepped", (100, 200))):
        train_dir = TrainDir(tmp_path / name)
        train_dir.checkpoints.mkdir(parents=True)
        cfg.save(load_config("configs/digits.yaml"), train_dir.config)
        for step in steps:  # named as checkpoints, which is all that choosing one by its step reads
            (train_dir.checkpoints / checkpoint_name(step)).write_bytes(b"not read")
    return tmp_path


def tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def assert_one_error_line(script: str, args: str, code: int, output: str, expected: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, (script, args, output)
    assert len(lines) == 1, (script, args, lines)
    assert lines[0].startswith(f"{script}: error: ") and expected in lines[0], (script, args, lines[0])


def test_bad_input_is_one_line_and_exit_code_2(
    folder: Path, tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli
) -> None:
    """Every case through the real script, and a refused train.py leaves nothing on disk that was not there
    before (no train_dir, no lock file). The cases run one by one from the session's warm server
    (tests/warm_cli.py) that pays the imports once; the first train.py and eval.py cases also run as cold
    processes, which would show anything printed while importing."""
    logs = tmp_path_factory.mktemp("logs")
    cold = {script: next(case for case in CASES if case[0] == script) for script in ("train.py", "eval.py")}
    with process_starter(logs) as start:
        cold_procs = [(case, start(case[0], *case[1].format(tmp=folder).split())) for case in cold.values()]
        for script, args, expected in CASES:
            before = tree(folder)
            proc = warm_scripts.start(script, *args.format(tmp=folder).split())
            assert_one_error_line(script, args, proc.wait(), proc.output(), expected)
            if script == "train.py":
                assert tree(folder) == before, (args, f"left {sorted(map(str, tree(folder) - before))}")
        for (script, args, expected), proc in cold_procs:
            assert_one_error_line(script, args, proc.wait(), proc.output(), expected)
