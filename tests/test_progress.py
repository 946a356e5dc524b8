"""train.py's progress bar as a terminal of 80, 100 or 160 columns shows it: a bar of sensible width beside
the step, its rate and the loss, in one line that fits (tqdm once squeezed the bar to one character
at 100 columns, to fit every scalar of the log line)."""

from __future__ import annotations

import io

import pytest

from shared.training.progress import BAR_MAX_COLUMNS, Progress


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_progress_bar_is_readable_at_any_common_width(columns: int) -> None:
    terminal = io.StringIO()
    progress = Progress(14999, 200000, file=terminal, columns=columns)
    progress.advance()
    scalars = {"loss": 0.123456, "learning_rate": 0.000999, "grad_norm": 1.5, "examples_per_sec": 12345.6}
    progress.report(15000, scalars)
    assert progress.bar is not None
    # The line as tqdm writes it, two hours in at 2.08 steps/s: fixed figures, not this test's timing.
    line = progress.bar.format_meter(**{**progress.bar.format_dict, "elapsed": 7205.0, "rate": 2.08})
    progress.close()
    assert terminal.getvalue(), "nothing was drawn"
    assert len(line) == min(columns, BAR_MAX_COLUMNS), line
    bar = line.split("|")[1]
    assert len(bar) >= 12, f"a {len(bar)}-character bar: {line!r}"
    for shown in ("15000/200000", "2.08step/s", "loss=0.1235"):
        assert shown in line, f"{shown} missing from {line!r}"
