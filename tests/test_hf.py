"""The built-in Hugging Face causal LM (`task: hf_causal_lm`), end to end: train.py and the eval.py daemon on a
tiny random-init GPT-2 with a BPE tokenizer trained here from text files, nothing downloaded (HF_HUB_OFFLINE
is set by tests/conftest.py).
One run, shared by the module: its records, best/ loaded by transformers' own from_pretrained, ad hoc
evaluation equal to the daemon's record; the same examples from a datasets folder and the exported tokenizer;
the metrics on unshifted labels; the one line a missing extra gives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from shared.evaluation.export import load_best, read_best
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.language import grammar_text
from shared.tasks.loading import build_task, load_config, resolve_config
from tests.conftest import ROOT, process_starter
from tests.warm_cli import WarmCli

MODEL = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32}
RUN = [
    "--set", "data.context=32", "--set", "data.batch_size=16", "--set", "data.vocab_size=400",
    "--set", "train.steps=60", "--set", "train.lr=0.003", "--set", "train.warmup_steps=5",
    "--set", "checkpoint.every_steps=20", "--set", "log.every_steps=10",
]  # fmt: skip


def write_texts(folder: Path, train_chars: int = 60_000, eval_chars: int = 6_000) -> dict[str, list[str]]:
    """Training and held-out text files, a sentence a line: data.train_files and data.eval_files."""
    files = {}
    for split, seed, characters in (("train", 1, train_chars), ("eval", 2, eval_chars)):
        path = folder / f"{split}.txt"
        path.write_text(grammar_text(characters, seed).replace(". ", ".\n"))
        files[f"{split}_files"] = [str(path)]
    return files


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[tuple[TrainDir, Callable]]:
    """(train_dir, start) after train.py and the daemon, started together, both exited 0."""
    folder = tmp_path_factory.mktemp("hf")
    config = {"task": "hf_causal_lm", "model": MODEL, "data": write_texts(folder)}
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    train_dir = TrainDir(folder / "run")
    train_dir.root.mkdir()
    with process_starter(folder, warm_scripts) as start:
        evaluator = start("eval.py", "--train-dir", str(train_dir.root))
        command = ["--train-dir", str(train_dir.root), "--config", str(folder / "config.yaml"), *RUN]
        trainer = start("train.py", *command)
        assert trainer.wait_while_logging() == 0, trainer.output()
        assert evaluator.wait() == 0, evaluator.output()
        yield train_dir, start


@pytest.mark.slow
def test_it_trains_and_every_checkpoint_is_scored_as_ad_hoc(hf_run: tuple[TrainDir, Callable]) -> None:
    train_dir, start = hf_run
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == [20, 40, 60] and all(r["status"] == "ok" for r in records), records
    assert set(records[-1]["metrics"]) == {"loss", "perplexity", "token_accuracy"}
    first, last = records[0]["metrics"], records[-1]["metrics"]
    assert last["perplexity"] < first["perplexity"] < 400, "it learns (a uniform guess over 400 tokens: 400)"
    # Every window is full (no -100 labels), so the metric on unshifted labels is the model's own loss.
    assert last["perplexity"] == pytest.approx(torch.tensor(last["loss"]).exp().item(), rel=1e-4)
    proc = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "latest", "--json")
    assert proc.wait() == 0, proc.output()
    adhoc = json.loads(next(line for line in proc.output().splitlines() if line.startswith("{")))
    assert adhoc["metrics"] == last


@pytest.mark.slow
def test_best_loads_with_transformers_from_pretrained(hf_run: tuple[TrainDir, Callable]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_dir, _ = hf_run
    assert read_best(train_dir)["metric"] == "perplexity"
    model = AutoModelForCausalLM.from_pretrained(train_dir.best).eval()
    tokenizer = AutoTokenizer.from_pretrained(train_dir.best)
    ids = tokenizer("The old cat sees a dog", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "The old cat sees a dog"
    with torch.no_grad():
        assert torch.equal(model(ids).logits, load_best(train_dir.root)(ids).logits)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "tied as trained"
    task = build_task(load_config(train_dir.config))
    vocab_and_merges = [json.loads(t.to_str())["model"] for t in (task.tokenizer, tokenizer.backend_tokenizer)]
    assert vocab_and_merges[0] == vocab_and_merges[1], "eval.py trains the same tokenizer again"


@pytest.mark.slow
def test_a_datasets_folder_and_the_exported_tokenizer_give_the_same_examples(
    hf_run: tuple[TrainDir, Callable], tmp_path: Path
) -> None:
    import datasets

    train_dir, _ = hf_run
    config = load_config(train_dir.config)
    files = {"train": config.data.train_files[0], "validation": config.data.eval_files[0]}
    lines = {split: Path(path).read_text().splitlines() for split, path in files.items()}
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"text": text}) for split, text in lines.items()}
    ).save_to_disk(tmp_path / "texts")
    raw = config.model_dump(mode="json")
    raw["data"] |= {"train_files": [], "eval_files": [], "dataset": str(tmp_path / "texts")}
    raw["data"]["tokenizer"] = str(train_dir.best / "tokenizer.json")
    from_folder, from_files = build_task(resolve_config(raw)), build_task(config)
    for split in ("train_data", "eval_data"):
        assert torch.equal(getattr(from_folder, split)().windows, getattr(from_files, split)().windows)


def test_the_metrics_take_unshifted_labels() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.metrics.language import HF_IGNORE_INDEX, causal_lm_metrics

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)).eval()
    ids = torch.randint(50, (3, 8))
    labels = ids.masked_fill(torch.arange(8) >= 6, HF_IGNORE_INDEX)  # the last two positions are padding
    with torch.no_grad():
        outputs = model(input_ids=ids, labels=labels)
    metrics = causal_lm_metrics()
    for metric in metrics.values():
        metric.update(outputs, labels)
    assert metrics["perplexity"].compute() == pytest.approx(outputs.loss.exp().item(), rel=1e-5)
    hits = outputs.logits[:, :5].argmax(-1) == ids[:, 1:6]  # position t predicts t + 1, up to the padding
    assert metrics["token_accuracy"].compute() == pytest.approx(hits.float().mean().item())


@pytest.mark.slow
def test_without_the_extra_one_line_and_exit_2(tmp_path: Path) -> None:
    hidden = "import runpy, sys; sys.modules['transformers'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"  # noqa: E501
    (tmp_path / "config.yaml").write_text("task: hf_causal_lm\n")
    command = ["train.py", "--config", str(tmp_path / "config.yaml"), "--train-dir", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-c", hidden, *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "train.py: error: task: hf_causal_lm needs transformers (the hf extra); install it: pip install -e '.[hf]'"
    ]
    assert not (tmp_path / "run").exists()
