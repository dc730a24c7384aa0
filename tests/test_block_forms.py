"""What the Prefect UI shows on a block's page: a runnable example and readable titles."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block

from blocks.database import TimescaleDBConnection
from blocks.receiver import KiwiSDRReceiver

BLOCKS: list[type[Block]] = [KiwiSDRReceiver, TimescaleDBConnection]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_example_box_shows_code(block: type[Block]) -> None:
    example = block.get_code_example() or ""
    assert example.strip().startswith("```python"), example
    assert f"import {block.__name__}" in example
    assert ">>>" not in example  # doctest prompts are escaped away by the UI
    assert ".load(" in example


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_every_field_has_a_written_title(block: type[Block]) -> None:
    untitled = [name for name, f in block.model_fields.items() if not f.title]
    assert untitled == []


def test_receiver_titles_name_units() -> None:
    titles = {k: v["title"] for k, v in KiwiSDRReceiver.model_json_schema()["properties"].items()}
    assert titles["url"] == "URL"
    assert titles["freq_offset_khz"] == "Down-converter offset (kHz)"
    assert titles["altitude_m"] == "Altitude (m)"


def test_database_titles_are_written_not_generated() -> None:
    schema = TimescaleDBConnection.model_json_schema()["properties"]
    assert schema["sslmode"]["title"] == "SSL mode"
    assert schema["connect_timeout_s"]["title"] == "Connect timeout (s)"
