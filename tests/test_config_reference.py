"""docs/config-reference.md is what shared.tasks.reference generates from the schema, so it cannot drift."""

from __future__ import annotations

import pytest
from pydantic import Field

from shared.config import Section
from shared.tasks import reference
from tests.conftest import ROOT


def test_the_committed_page_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == reference.page(), f"docs/config-reference.md is stale; regenerate it: {reference.COMMAND}"


def test_every_key_of_the_schema_is_on_the_page_with_its_default() -> None:
    page = reference.page()
    assert "| `train.steps` | integer | 1 to 999,999,999 | `1000` |" in page
    assert "| `train.lr` | number | > 0 | `0.001` |" in page
    assert "| `train.optimizer` | string | one of `sgd`, `adam`, `adamw`, `rmsprop` | `adamw` |" in page
    assert "| `train.max_eval_lag` | integer or null | 0 to 2^31 - 1 | `null` |" in page
    assert "| `model.dim` | integer | 64 to 2^31 - 1, a multiple of 64 | `512` |" in page  # synthetic


def test_a_key_without_a_description_is_refused_by_name() -> None:
    class Undocumented(Section):
        documented: int = Field(1, ge=0, description="has one")
        width: int = Field(1, ge=0)

    with pytest.raises(ValueError, match=r"Undocumented\.width has no description"):
        list(reference.rows(Undocumented, "model."))
