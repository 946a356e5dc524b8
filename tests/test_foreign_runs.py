"""eval.py on runs other trainers wrote (docs/foreign-runs.md): a real transformers Trainer run (`hf`) and
weights files a loop saved (`files`), each with the daemon beside it, killed once and started again, and an ad
hoc evaluation equal to the daemon's record."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.loading import build_task, resolve_config
from tests.conftest import Proc, process_starter, scalar_points, wait_until
from tests.foreign_tasks import AT_GATE, GATE
from tests.test_hf import MODEL, write_texts
from tests.warm_cli import WarmCli

WAIT = 300  # seconds: a bound for a busy machine, never reached on a quiet one


def records(results: Path) -> list[dict[str, Any]]:
    return read_records(results) if results.exists() else []


def recorded(results: Path, *steps: int) -> Callable[[], bool]:
    return lambda: set(steps) <= {r["step"] for r in records(results)}


def watching(daemon: Proc) -> Callable[[], bool]:
    return lambda: "waiting for the first complete checkpoint" in daemon.output() or "evaluating " in daemon.output()


def printed(adhoc: Proc) -> dict[str, Any]:
    """The JSON object an ad hoc `eval.py --checkpoint ... --json` printed last."""
    return json.loads(adhoc.output().strip().splitlines()[-1])


# --- hf: a transformers Trainer run -------------------------------------------------------------------------

SAVE_STEPS, STEPS, LIMIT = 2, 12, 2


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[dict[str, Any]]:
    """A Trainer (save_steps 2, save_total_limit 2) with the daemon beside it, choreographed by a callback:
    the daemon held mid-evaluation of checkpoint-2 (a gated task) until save_total_limit deleted checkpoint-4
    unevaluated, then SIGKILLed mid-evaluation of checkpoint-10 and started again."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    folder = tmp_path_factory.mktemp("hf-foreign")
    data = {**write_texts(folder, train_chars=20_000, eval_chars=3_000), "context": 32, "vocab_size": 400}
    config = {"task": "tests.foreign_tasks:GatedHFTask", "model": MODEL, "data": data, "source": {"format": "hf"}}
    eval_yaml = folder / "eval.yaml"
    eval_yaml.write_text(json.dumps(config))
    output = folder / "output"
    results = output / "eval" / "results.jsonl"
    daemon_args = ("--train-dir", str(output), "--config", str(eval_yaml))
    (folder / GATE).touch()
    saved_at: dict[int, float] = {}
    with process_starter(folder, warm_scripts) as start:
        daemons = [start("eval.py", *daemon_args)]
        wait_until(watching(daemons[0]), WAIT, "the daemon to watch the output_dir")

        class Choreography(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                step = state.global_step
                saved_at[step] = time.time()  # trainer_state.json written, rotation done
                at_gate = folder / AT_GATE
                if step in (2, 10):  # the daemon holds this checkpoint, loaded, mid-evaluation
                    wait_until(at_gate.exists, WAIT, f"the daemon to evaluate checkpoint-{step}")
                    at_gate.unlink()
                if step == 8:  # checkpoint-4 was deleted (save_total_limit) before it was evaluated
                    (folder / GATE).unlink()
                    wait_until(recorded(results, 2, 4, 6, 8), WAIT, "steps 2 to 8 recorded")
                    (folder / GATE).touch()
                if step == 10:
                    daemons[0].signal(signal.SIGKILL)
                    assert daemons[0].wait() == -signal.SIGKILL
                    (folder / GATE).unlink()
                    daemons.append(start("eval.py", *daemon_args))

        task = build_task(resolve_config({k: v for k, v in config.items() if k != "source"}))
        arguments = TrainingArguments(
            output_dir=str(output), max_steps=STEPS, save_steps=SAVE_STEPS, save_total_limit=LIMIT,
            logging_steps=2, per_device_train_batch_size=8, learning_rate=3e-3, report_to=["tensorboard"],
            use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        )  # fmt: skip
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the daemon has the other core
        try:
            trainer = Trainer(
                task.build_model(), arguments, train_dataset=task.train_data(), callbacks=[Choreography()]
            )
            trainer.train()
        finally:
            torch.set_num_threads(threads)
        ad_hoc = start("eval.py", *daemon_args, "--checkpoint", f"{output}/checkpoint-{STEPS}", "--json")
        wait_until(recorded(results, *range(SAVE_STEPS, STEPS + 1, SAVE_STEPS)), WAIT, "every step recorded")
        assert ad_hoc.wait() == 0, ad_hoc.output()
        daemons[-1].signal(signal.SIGTERM)
        assert daemons[-1].wait() == 0, daemons[-1].output()
        yield {"output": output, "results": results, "saved_at": saved_at, "adhoc": printed(ad_hoc), "daemons": daemons}


def test_a_trainer_run_is_evaluated_once_per_checkpoint_in_step_order(hf_run: dict[str, Any]) -> None:
    found = records(hf_run["results"])
    assert [r["step"] for r in found] == list(range(SAVE_STEPS, STEPS + 1, SAVE_STEPS))
    by_step = {r["step"]: r for r in found}
    assert by_step[4]["status"] == "skipped" and "deleted by its trainer" in by_step[4]["reason"], by_step[4]
    assert all(r["status"] == "ok" for s, r in by_step.items() if s != 4), found
    assert by_step[2]["file"] == "checkpoint-2"
    assert (hf_run["output"] / "best" / "model.safetensors").is_file()
    assert not os.listdir(hf_run["output"] / "eval" / "claims")  # the killed daemon's claim was taken over
    # Figures for the report: from a checkpoint's completion (the Trainer's on_save) to its record.
    lags = [r["wall_time"] + r["seconds"] - hf_run["saved_at"][s] for s, r in by_step.items() if s in (6, 8, 12)]
    print(f"hf: completion to record, median {statistics.median(lags):.2f}s of {[round(x, 2) for x in lags]}")


def test_the_eval_curves_sit_beside_the_trainers(hf_run: dict[str, Any]) -> None:
    runs = hf_run["output"] / "runs"
    ok = [r["step"] for r in records(hf_run["results"]) if r["status"] == "ok"]
    assert [step for step, _ in scalar_points(runs / "eval", "perplexity")] == ok
    trainer_runs = [run for run in runs.iterdir() if run.name != "eval"]
    assert len(trainer_runs) == 1 and scalar_points(trainer_runs[0], "train/loss"), trainer_runs


def test_ad_hoc_equals_the_daemons_record(hf_run: dict[str, Any]) -> None:
    record = next(r for r in records(hf_run["results"]) if r["step"] == STEPS)
    assert hf_run["adhoc"]["step"] == STEPS
    assert hf_run["adhoc"]["metrics"] == record["metrics"]


# --- files: weights files a loop saved ----------------------------------------------------------------------

FILES_CONFIG = {"task": "regression", "source": {"format": "files", "pattern": "weights/model_{step}.safetensors"}}


def save_weights(step: int) -> bytes:
    """A regression model's weights (random, by step) as safetensors, keyed with a wrapper's `model.` prefix."""
    torch.manual_seed(step)
    model = build_task(resolve_config({"task": "regression"})).build_model()
    return safetensors.torch.save({f"model.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()})


@contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """`folder` made read-only for real: its mode, and (as root, whom modes do not stop) a read-only bind
    mount over it. Yields whether writes there now fail."""
    os.chmod(folder, 0o555)
    mounted = os.geteuid() == 0 and not subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
            probe.unlink()
            yield False
        except OSError:
            yield True
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        os.chmod(folder, 0o755)


def test_weights_files_are_evaluated_once_complete_and_ad_hoc_agrees(tmp_path: Path, start: Callable) -> None:
    run, weights = tmp_path / "run", tmp_path / "run" / "weights"
    weights.mkdir(parents=True)
    (tmp_path / "eval.yaml").write_text(json.dumps(FILES_CONFIG))
    args = ("--train-dir", str(run), "--config", str(tmp_path / "eval.yaml"))
    for step in (10, 20):
        (weights / f"model_{step}.safetensors").write_bytes(save_weights(step))
    another_models = safetensors.torch.save({"model.0.weight": torch.zeros(3, 3)})
    (weights / "model_5.safetensors").write_bytes(another_models)
    growing = save_weights(30)
    with open(weights / "model_30.safetensors", "wb") as f:  # written in place, as a loop may
        f.write(growing[: len(growing) // 2])
        f.flush()
        results = run / "eval" / "results.jsonl"
        daemon = start("eval.py", *args)
        wait_until(recorded(results, 5, 10, 20), WAIT, "steps 5 to 20 recorded")
        written_at = time.time()
        f.write(growing[len(growing) // 2 :])
    wait_until(recorded(results, 30), WAIT, "step 30 recorded once whole")
    found = records(results)
    assert [(r["step"], r["status"], r["file"]) for r in found] == [
        (step, "failed" if step == 5 else "ok", f"weights/model_{step}.safetensors") for step in (5, 10, 20, 30)
    ]
    assert "does not fit this model" in found[0]["reason"], found[0]
    print(f"files: completion to record {found[-1]['wall_time'] + found[-1]['seconds'] - written_at:.2f}s")
    daemon.signal(signal.SIGKILL)
    daemon.wait()

    results_dir = tmp_path / "results"
    with read_only(run) as enforced:  # three at once: each start is what costs here
        ad_hoc = start("eval.py", *args, "--checkpoint", "latest", "--json")
        again = start("eval.py", *args, "--results-dir", str(results_dir), "--idle-timeout", "1")
        refused = start("eval.py", *args, "--idle-timeout", "1") if enforced else None
        assert again.wait() == 0, again.output()
        assert ad_hoc.wait() == 0, ad_hoc.output()
        if refused is not None:
            assert refused.wait() == 2, refused.output()
            assert "--results-dir" in refused.output().strip().splitlines()[-1]
    assert printed(ad_hoc)["metrics"] == found[-1]["metrics"]
    assert [r["step"] for r in records(TrainDir(results_dir).results)] == [5, 10, 20, 30]
    assert [r["step"] for r in records(results)] == [5, 10, 20, 30]  # the run's own ledger as it was
    shutil.rmtree(results_dir)


# --- hf: the weights layouts save_pretrained writes, in process ---------------------------------------------


def test_hf_folders_are_complete_with_their_trainer_state_and_load_every_weights_layout(tmp_path: Path) -> None:
    """Sharded safetensors (with their index) and pytorch_model.bin load strictly, tied lm_head and all, into
    the model or into a wrapper holding it as `model.`; a folder is listed only once trainer_state.json is
    whole."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.checkpoints.sources.hf import HFCheckpoints

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    trained, source = GPT2LMHeadModel(config), HFCheckpoints()
    sharded, binary = tmp_path / "checkpoint-3", tmp_path / "checkpoint-5"
    trained.save_pretrained(sharded, max_shard_size="5KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    binary.mkdir()
    torch.save(trained.state_dict(), binary / "pytorch_model.bin")
    state = json.dumps({"global_step": 5})
    (binary / "trainer_state.json").write_text(state[:-1])  # cut short: still being written
    assert source.list(tmp_path) == []
    (sharded / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (binary / "trainer_state.json").write_text(state)
    assert [c.step for c in source.list(tmp_path)] == [3, 5]

    wrapper = torch.nn.Module()
    wrapper.model = GPT2LMHeadModel(config)
    for folder, model in ((sharded, GPT2LMHeadModel(config)), (binary, wrapper)):
        assert source.restore(folder, model, within=tmp_path) == int(folder.name.split("-")[1])
        loaded = model.model if model is wrapper else model
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())
        assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
