"""Fixtures shared by the recipe tests."""

import pytest
from support import color_rows, write_jsonl


@pytest.fixture
def color_data(tmp_path):
    """(train, validation) JSONL files of the colour task: 48 and 16 examples."""
    return (
        write_jsonl(tmp_path / "train.jsonl", color_rows(48)),
        write_jsonl(tmp_path / "val.jsonl", color_rows(16, offset=1000)),
    )
