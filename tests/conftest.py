"""Fixtures shared by the whole test suite."""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The default base model's real tokenizer (converted once into ~/.cache/tunelab, ~20 s)."""
    from tunelab.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct").path)
