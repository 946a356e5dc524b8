"""What users see: a real TensorBoard server over a train_dir made by a short real run, read through its
HTTP JSON API under both of its loaders, and its scalars dashboard drawn by headless Chromium; and a
train.py SIGKILLed with points past its newest checkpoint on disk, then resumed on a clock hours behind (another
host), leaves one point per (tag, step)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard_data_server import server_binary

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from tests.conftest import (
    SHORT_RUN,
    Proc,
    fetch_json,
    keep_artifact,
    process_starter,
    skewed,
    system_tool,
    tensorboard_url,
    wait_until,
    wait_while_progressing,
)
from tests.warm_cli import WarmCli

pytestmark = pytest.mark.slow

LOADERS = [
    pytest.param("false", id="legacy-loader"),
    pytest.param(
        "true",
        id="fast-loader",
        marks=pytest.mark.skipif(
            server_binary() is None, reason="tensorboard-data-server has no binary for this platform"
        ),
    ),
]
HPARAM_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli) -> Iterator[TrainDir]:
    """A train_dir from a short real run: the eval.py daemon following train.py, as users run them."""
    folder = tmp_path_factory.mktemp("tensorboard")
    train_dir = TrainDir(folder / "run")
    train_dir.root.mkdir()
    with process_starter(folder, warm_scripts) as start:
        evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "120")
        trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN)
        assert trainer.wait_while_logging() == 0, trainer.output()
        assert evaluator.wait() == 0, evaluator.output()
    yield train_dir


@pytest.fixture
def tensorboard(start: Callable[..., Proc]) -> Callable[..., str]:
    """tensorboard(logdir, load_fast) -> URL of a TensorBoard serving it on a free loopback port."""

    def _start(logdir: Path, load_fast: str) -> str:
        args = ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"]
        return tensorboard_url(start("-m", "tensorboard.main", *args, f"--load_fast={load_fast}").log)

    return _start


def until(what: str, fetch: Callable[[], Any], expected: Any, timeout: float = 60) -> None:
    """TensorBoard loads in the background: wait, boundedly, until an endpoint gives the expected answer."""
    seen: list[Any] = []

    def matches() -> bool:
        seen[:] = [fetch()]
        return seen[0] == expected

    try:
        wait_until(matches, timeout, what, interval=0.25)
    except pytest.fail.Exception:
        pytest.fail(f"{what}: expected {expected!r}, TensorBoard kept answering {seen[0]!r}")


@pytest.mark.parametrize("load_fast", LOADERS)
def test_tensorboard_serves_train_and_eval_side_by_side(train_dir: TrainDir, tensorboard, load_fast: str) -> None:
    url = tensorboard(train_dir.root, load_fast)
    provider = fetch_json(f"{url}/data/environment")["debug"]["data_provider"]
    assert provider.startswith("GrpcDataProvider" if load_fast == "true" else "MultiplexerDataProvider")

    records = read_records(train_dir.results)
    checkpoint_steps = [c.step for c in list_checkpoints(train_dir.checkpoints)]
    assert checkpoint_steps == [r["step"] for r in records] == [40, 80, 120, 160, 200]

    def scalar_steps(run: str, tag: str) -> list[int]:
        return [step for _, step, _ in fetch_json(f"{url}/data/plugin/scalars/scalars?run={run}&tag={tag}")]

    until("the eval points", lambda: scalar_steps("eval", "loss"), checkpoint_steps)
    # Exactly the two runs: the layout, HParams and PR curves went into them, not into stray runs.
    assert sorted(fetch_json(f"{url}/data/runs")) == ["eval", "train"]
    tags = fetch_json(f"{url}/data/plugin/scalars/tags")
    assert "loss" in tags["train"] and "loss" in tags["eval"], "train and eval must share the loss tag"
    assert {"learning_rate", "grad_norm", "examples_per_sec", "eval_lag"} <= tags["train"].keys()
    assert {"accuracy", "f1_macro"} <= tags["eval"].keys()
    until("the train points", lambda: scalar_steps("train", "loss"), list(range(10, 201, 10)))
    lags = fetch_json(f"{url}/data/plugin/scalars/scalars?run=train&tag=eval_lag")
    assert [step for _, step, _ in lags] == list(range(10, 201, 10))
    assert all(0 <= lag <= step for _, step, lag in lags)

    # The overview: loss (train and eval) and accuracy first, how training runs under them.
    layout = fetch_json(f"{url}/data/plugin/custom_scalars/layout")
    charts = [[chart["multiline"]["tag"] for chart in category["chart"]] for category in layout["category"]]
    assert charts == [
        [["^loss$"], ["^accuracy$"]],
        [["^learning_rate$"], ["^grad_norm$"], ["^examples_per_sec$"], ["^eval_lag$"]],
    ]

    images = fetch_json(f"{url}/data/plugin/images/images?run=eval&tag=confusion_matrix&sample=0")
    assert [image["step"] for image in images] == checkpoint_steps
    with urlopen(f"{url}/data/plugin/images/individualImage?{images[-1]['query']}", timeout=30) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"

    pr_tags = fetch_json(f"{url}/data/plugin/pr_curves/tags")["eval"]
    assert sorted(pr_tags) == [f"pr_curve/{digit}" for digit in range(10)]
    curves = fetch_json(f"{url}/data/plugin/pr_curves/pr_curves?run=eval&tag={quote('pr_curve/3', safe='')}")["eval"]
    assert curves[-1]["step"] == checkpoint_steps[-1] and len(curves[-1]["precision"]) > 10

    (config_text,) = fetch_json(f"{url}/data/plugin/text/text?run=train&tag=config/text_summary")
    assert config_text["step"] == 0 and "steps: 200" in config_text["text"]  # the resolved config, --set applied

    hparams = fetch_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"train.lr", "train.optimizer", "model.channels", "seed"} <= {h["name"] for h in hparams["hparamInfos"]}
    groups = fetch_json(
        f"{url}/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": HPARAM_STATUSES, "colParams": [], "startIndex": 0, "sliceSize": 10},
    )["sessionGroups"]
    assert [group["name"] for group in groups] == ["eval"]
    assert groups[0]["hparams"]["train.optimizer"] == "adamw"
    assert groups[0]["hparams"]["model.channels"] == "8", "an integer option shows as 8, not 8.0000"
    final = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
    assert final["accuracy"] == pytest.approx(records[-1]["metrics"]["accuracy"], rel=1e-6)


def chart_runs(page: Any, card_selector: str, title: str) -> set[str]:
    """The runs whose colour one chart actually draws a line in (Plottable SVG paths, two points or more).

    Each dashboard has its own runs selector (hidden ones too); all give a run the same colour.
    """
    colours = {
        row.locator(".item-label-container span").text_content().strip(): row.locator(".isolator").evaluate(
            "e => getComputedStyle(e).color"
        )
        for row in page.locator("tf-multi-checkbox .name-row").all()
    }
    for card in page.locator(card_selector).all():
        if card.evaluate("c => c.tag || c.title") == title:
            strokes = card.locator("path.line").evaluate_all(
                "paths => paths.filter(p => (p.getAttribute('d') || '').includes('L'))"
                ".map(p => getComputedStyle(p).stroke)"
            )
            return {run for run, colour in colours.items() if colour in strokes}
    return set()


def test_browser_shows_train_and_eval_loss_on_one_chart(train_dir: TrainDir, tensorboard) -> None:
    chromium = system_tool("chromium", "chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    url = tensorboard(train_dir.root, "auto")
    until("both runs", lambda: sorted(fetch_json(f"{url}/data/runs")), ["eval", "train"])

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/#scalars&tagFilter=%5Eloss%24")
            wait_until(
                lambda: chart_runs(page, "tf-scalar-card", "loss") == {"train", "eval"},
                60,
                "the Scalars dashboard to draw loss for train and eval",
                interval=0.5,
            )
            page.screenshot(path=keep_artifact("tensorboard-scalars-loss.png"))

            page.goto(f"{url}/#custom_scalars")
            overview = "tf-custom-scalar-multi-line-chart-card"
            wait_until(
                lambda: chart_runs(page, overview, "loss: train and eval") == {"train", "eval"},
                60,
                "the Custom Scalars overview to draw loss for train and eval",
                interval=0.5,
            )
            page.screenshot(path=keep_artifact("tensorboard-custom-scalars-overview.png"))
        finally:
            browser.close()


# Checkpoints every 50 steps, points every 5: a kill at step >= 70 leaves points 55..70 past checkpoint 50.
RESTARTED_RUN = [
    "--config", "configs/digits.yaml",
    "--set", "model.channels=8",
    "--set", "model.hidden=32",
    "--set", "train.steps=150",
    "--set", "train.warmup_steps=10",
    "--set", "checkpoint.every_steps=50",
    "--set", "log.every_steps=5",
]  # fmt: skip


@pytest.fixture(scope="module")
def restarted_train_dir(
    tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli
) -> Iterator[tuple[TrainDir, dict[str, str]]]:
    """train.py SIGKILLed twice at step >= 70 (newest checkpoint: 50), then run to the end on a clock 3 hours
    behind, while a TensorBoard per loader serves the train_dir throughout: (train_dir, loader -> URL)."""
    folder = tmp_path_factory.mktemp("restarts")
    train_dir = TrainDir(folder / "run")
    train_dir.root.mkdir()
    with process_starter(folder, warm_scripts) as start:
        urls = {}
        for loader in ["false", "true"] if server_binary() is not None else ["false"]:
            args = ["--logdir", str(train_dir.root), "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"]
            urls[loader] = tensorboard_url(start("-m", "tensorboard.main", *args, f"--load_fast={loader}").log)
        for _ in range(2):
            trainer = start("train.py", "--train-dir", str(train_dir.root), *RESTARTED_RUN)

            def past_checkpoint_50(pid: int = trainer.popen.pid) -> bool:
                try:
                    beat = json.loads(train_dir.heartbeat.read_text())
                except (FileNotFoundError, ValueError):
                    return False
                return beat["pid"] == pid and beat["step"] >= 70

            wait_while_progressing(past_checkpoint_50, trainer, "train.py to pass step 70")
            trainer.signal(signal.SIGKILL)
            trainer.wait()
            assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [50], trainer.output()
        # Resumed on another host whose clock is 3 hours behind: its event file must still be read last.
        final = start("train.py", "--train-dir", str(train_dir.root), *RESTARTED_RUN, env=skewed(-3 * 3600))
        assert final.wait_while_logging() == 0, final.output()
        yield train_dir, urls


def test_a_killed_trainer_leaves_one_point_per_tag_and_step_in_every_reader(restarted_train_dir) -> None:
    train_dir, urls = restarted_train_dir
    every_log_step = list(range(5, 151, 5))
    accumulator = EventAccumulator(str(train_dir.train_run), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == every_log_step
    # Tensors are what the legacy accumulator does not purge at a restart: the files must not hold the old ones.
    assert [e.step for e in accumulator.Tensors("config/text_summary")] == [0, 50], "one config per start step"
    assert [e.step for e in accumulator.Tensors("custom_scalars__config__")] == [0]

    for loader, url in urls.items():  # servers that were reading the run while it was killed and resumed

        def loss_steps(url: str = url) -> list[int]:
            return [step for _, step, _ in fetch_json(f"{url}/data/plugin/scalars/scalars?run=train&tag=loss")]

        until(f"the {loader} loader's loss points", loss_steps, every_log_step)
        texts = fetch_json(f"{url}/data/plugin/text/text?run=train&tag=config/text_summary")
        assert [text["step"] for text in texts] == [0, 50], f"load_fast={loader}"
