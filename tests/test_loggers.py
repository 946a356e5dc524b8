"""The logger backends on their own: a run reopened after its writer was SIGKILLed keeps one point per
(tag, step) for every kind of record, in TensorBoard's own readers; a new event file is read after the
run's others whatever the clocks; HParams integers stay integers; the
confusion-matrix image stops at its class cap, and its class names stay apart."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.util import tensor_util
from torch.utils.tensorboard import summary as summaries

from shared.errors import UsageError
from shared.loggers import crc32c, dashboards
from shared.loggers.base import Fanout, LogsHParams, LogsLayout, LogsPRCurves, NullLogger
from shared.loggers.confusion import IMAGE_MAX_CLASSES, ConfusionPlot, confusion_image
from shared.loggers.mlflow_backend import MlflowLogger
from shared.loggers.tensorboard import TensorBoardLogger
from shared.metrics.classification import PR_THRESHOLDS
from shared.protocol.artifacts import PRCurves
from tests.conftest import HANG_GUARD, ROOT, steps_by_tag

# Writes every kind of record at steps [first, last] into a run opened at purge_step, flushes, says so on
# stdout, then either closes or waits to be killed: a writer that dies with its points on disk.
WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from shared.loggers.tensorboard import TensorBoardLogger
run, (purge_step, first, last), then = Path(sys.argv[1]), map(int, sys.argv[2:5]), sys.argv[5]
logger = TensorBoardLogger(run, purge_step)
if first == 0:
    logger.layout({"overview": {"loss": ["Multiline", ["^loss$"]]}})
    logger.hparams({"model.channels": 32, "train.lr": 0.003, "train.optimizer": "adamw"})
logger.text("config", "resumed at %d" % first, first)
for step in range(first, last + 1):
    logger.scalar("loss", 1.0 / (step + 1), step)
    logger.text("notes", "step %d" % step, step)
    logger.image("picture", np.full((4, 4, 3), step, dtype=np.uint8), step)
    logger.pr_curve("pr_curve/0", np.arange(8.0), np.arange(8.0)[::-1], step)
logger.flush()
print("flushed", flush=True)
if then == "die":
    time.sleep(600)
logger.close()
"""


def run_writer(run: Path, purge_step: int, first: int, last: int, then: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run), str(purge_step), str(first), str(last), then],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "flushed"
        if then == "die":
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=HANG_GUARD) == (-signal.SIGKILL if then == "die" else 0)
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose writer was SIGKILLed three times with points after its last durable step on disk."""
    run = tmp_path_factory.mktemp("loggers") / "run"
    run_writer(run, purge_step=0, first=0, last=5, then="die")  # a fresh run, killed after step 5
    run_writer(run, purge_step=0, first=0, last=4, then="die")  # fresh again (nothing was durable), killed
    run_writer(run, purge_step=3, first=2, last=7, then="die")  # resumed from step 2, killed after 7
    run_writer(run, purge_step=3, first=2, last=9, then="close")  # resumed from step 2 again, completes
    return run


@pytest.mark.slow
@pytest.mark.parametrize("reader", [event_accumulator, plugin_event_accumulator], ids=["legacy", "plugin"])
def test_a_run_reopened_after_sigkill_keeps_one_point_per_tag_and_step(restarted_run: Path, reader) -> None:
    run = restarted_run
    found = steps_by_tag(run, reader)
    everything = list(range(10))
    expected_tensors = {"notes/text_summary": everything, "pr_curve/0": everything, "config/text_summary": [0, 2]}
    if reader is plugin_event_accumulator:  # it reads scalars and images as tensors too
        expected_tensors |= {"loss": everything, "picture": everything}
    else:
        assert found["loss"] == everything and found["picture"] == everything
    for tag, steps in expected_tensors.items():
        assert found[tag] == steps, f"{tag}: one point per step expected"
    assert found["custom_scalars__config__"] == [0]
    if reader is plugin_event_accumulator:  # the legacy one does not read HParams records
        assert found["_hparams_/session_start_info"] == [0]
    assert not [p.name for p in run.iterdir() if "tfevents" not in p.name], "no repair temp file is left"


def test_a_new_event_file_is_read_after_every_file_in_the_run_whatever_the_clocks(tmp_path: Path) -> None:
    """An event file's name carries its writer's clock; a file named by a clock 74 years ahead is still read
    before the next writer's, so no point is hidden; a name no writer can sort after is refused in one line."""
    run = tmp_path / "run"
    for first, last in [(0, 2), (3, 5)]:
        with TensorBoardLogger(run, purge_step=first) as logger:
            for step in range(first, last + 1):
                logger.scalar("loss", 1.0 / (step + 1), step)
        if first == 0:
            (written,) = run.iterdir()
            ahead = written.rename(run / "events.out.tfevents.4102444800.another-host.1")  # 2100-01-01
    assert sorted(path.name for path in run.iterdir())[0] == ahead.name, "the new file is read after it"
    assert steps_by_tag(run, event_accumulator)["loss"] == list(range(6))

    (run / "events.out.tfevents.9999999999.x").write_bytes(b"")
    with pytest.raises(UsageError, match=r"tfevents\.9999999999\.x: TensorBoard reads this file after any"):
        TensorBoardLogger(run, purge_step=6)


def test_hparams_show_integers_as_integers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_writer(run, purge_step=0, first=0, last=0, then="close")
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = plugin_event_accumulator.EventAccumulator(str(run))
    accumulator.Reload()
    metadata = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(metadata).session_start_info.hparams
    assert hparams["model.channels"].string_value == "32", "the HParams tab would print 32 as 32.000"
    assert hparams["train.lr"].number_value == pytest.approx(0.003)
    assert hparams["train.optimizer"].string_value == "adamw"


def test_the_confusion_image_is_drawn_up_to_the_class_cap_only() -> None:
    image = confusion_image(np.diag([36, 35, 37]).tolist(), ["cat", "dog", "emu"])
    assert image is not None and image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[1] > image.shape[0], "the colour bar sits beside the square matrix"
    names = [f"class {i}" for i in range(IMAGE_MAX_CLASSES + 1)]
    assert confusion_image(np.eye(len(names), dtype=int).tolist(), names) is None


def test_a_confusion_image_redrawn_in_a_used_figure_equals_one_drawn_afresh() -> None:
    """Each matrix redraws only the cells of its class names' figure: nothing of the matrix before shows."""
    names = [str(digit) for digit in range(10)]
    before = np.full((10, 10), 3) + np.diag(np.arange(10) * 4)
    after = np.diag(np.arange(10) + 20)
    after[2, 7] = 5
    in_used_figure = confusion_image(before.tolist(), names), confusion_image(after.tolist(), names)
    afresh = ConfusionPlot(tuple(names)).render(after)
    assert not np.array_equal(in_used_figure[0], in_used_figure[1])
    assert np.array_equal(in_used_figure[1], afresh)


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize(
    "names",
    [CIFAR10, [str(digit) for digit in range(10)], [f"category_{i:02d}" for i in range(IMAGE_MAX_CLASSES)]],
    ids=["10 names", "10 digits", f"{IMAGE_MAX_CLASSES} names"],
)
def test_the_predicted_class_names_neither_overlap_nor_leave_the_image(names: list[str]) -> None:
    """Neighbouring x labels, upright or slanted, share no pixel of ink, and each lies inside the image."""
    plot = ConfusionPlot(tuple(names))
    height, width = plot.frame.shape[:2]
    inked = np.zeros((height, width), dtype=int)
    for label in plot.placed:
        rows, columns = label.ink.shape
        assert label.left >= 0 and label.left + columns <= width and label.top >= 0 and label.top + rows <= height
        inked[label.top : label.top + rows, label.left : label.left + columns] += label.ink > 0
    assert inked.max() == 1


def test_an_image_reads_back_from_the_event_file_pixel_for_pixel(tmp_path: Path) -> None:
    """The logger's own PNG encoder (faster than torch's summary.image) is one TensorBoard decodes."""
    image = confusion_image(np.diag([36, 35, 37]).tolist(), ["cat", "dog", "emu"])
    assert image is not None
    with TensorBoardLogger(tmp_path / "run", purge_step=None) as logger:
        logger.image("confusion_matrix", image, step=3)
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "run"))
    accumulator.Reload()
    (written,) = accumulator.Images("confusion_matrix")
    assert (written.step, written.height, written.width) == (3, *image.shape[:2])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(written.encoded_image_string))), image)


def test_the_event_records_crc_is_tensorboards_own() -> None:
    """Each record's masked CRC-32C (NumPy lanes for long records) equals TensorBoard's byte-by-byte one."""
    rng = np.random.default_rng(0)
    for size in [*range(0, 1200, 7), 3_048, 28_523, 100_003]:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32c.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data), size


def test_a_pr_curve_from_bucket_counts_equals_tensorboards_own_from_the_examples(tmp_path: Path) -> None:
    """The evaluator keeps only each class's counts per bucket; the curve written from them is the one
    TensorBoard's own summary computes from every example's label and probability."""
    rng = np.random.default_rng(0)
    labels, probabilities = rng.random(500) < 0.3, rng.random(500)
    buckets = np.minimum((probabilities * (PR_THRESHOLDS - 1)).astype(int), PR_THRESHOLDS - 1)
    positives = np.bincount(buckets[labels], minlength=PR_THRESHOLDS).astype(float)
    negatives = np.bincount(buckets[~labels], minlength=PR_THRESHOLDS).astype(float)
    logger = TensorBoardLogger(tmp_path / "run", purge_step=None)
    logger.pr_curve("pr_curve/0", positives, negatives, step=1)
    logger.close()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    accumulator.Reload()
    (written,) = accumulator.Tensors("pr_curve/0")
    expected = summaries.pr_curve("pr_curve/0", labels, probabilities, num_thresholds=PR_THRESHOLDS)
    from_examples = tensor_util.make_ndarray(expected.value[0].tensor)
    assert np.allclose(tensor_util.make_ndarray(written.tensor_proto), from_examples)


def test_pr_curves_go_only_to_the_backends_that_declare_them(tmp_path: Path) -> None:
    """PR curves, HParams and the layout are capabilities: MLflow declares HParams alone, and a Fanout passes
    a PR curve on to TensorBoard while a backend without the capability is left out, not called."""
    assert all(issubclass(TensorBoardLogger, able) for able in (LogsPRCurves, LogsHParams, LogsLayout))
    assert issubclass(MlflowLogger, LogsHParams)
    assert not issubclass(MlflowLogger, LogsPRCurves) and not issubclass(MlflowLogger, LogsLayout)
    curves = PRCurves(["cat"], positives=[[1.0, 2.0]], negatives=[[2.0, 1.0]])
    with Fanout([NullLogger(), TensorBoardLogger(tmp_path / "run", purge_step=None)]) as logger:
        dashboards.write_artifact(logger, "pr_curves", curves, step=3)
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Tensors("pr_curve/cat")] == [3]
