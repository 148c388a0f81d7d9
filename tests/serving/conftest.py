"""Fixtures the serving tests share: the tiny model's tokenizer and each module's prompts."""

import pytest

from tunelab.data.template import prompt_ids
from tunelab.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def prompts(request, tok):
    """The test module's ``QUESTIONS``, each as a one-turn chat prompt."""
    return [prompt_ids(tok, [{"role": "user", "content": q}]) for q in request.module.QUESTIONS]
