"""The converted default model's folder loads its tokenizer without parsing tokenizer.json in
Python, and gives the same tokenizer as before; older conversions are redone."""

import json

import pytest
import transformers.tokenization_utils_base as tokenization_base
from transformers import AutoTokenizer

from tunelab.models.embedded_gguf import (
    CONVERSION_VERSION,
    MARKER,
    is_converted,
    save_tokenizer,
)


@pytest.fixture
def python_parsed(monkeypatch):
    """The files transformers' tokenizer loading reads with Python's json.load."""
    seen = []
    original = tokenization_base.json.load

    def load(handle, *args, **kwargs):
        seen.append(getattr(handle, "name", "?"))
        return original(handle, *args, **kwargs)

    monkeypatch.setattr(tokenization_base.json, "load", load)
    return seen


def test_saved_tokenizer_lists_its_added_tokens_and_reloads_the_same(
    tmp_path, default_model_dir, python_parsed
):
    plain, listed = tmp_path / "plain", tmp_path / "listed"
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.save_pretrained(plain)  # transformers' own save: no added tokens in the config
    save_tokenizer(tokenizer, listed)
    config = json.loads((listed / "tokenizer_config.json").read_text())
    assert "added_tokens_decoder" not in json.loads((plain / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["2"]["content"] == "<|im_end|>"

    python_parsed.clear()
    before = AutoTokenizer.from_pretrained(plain)
    assert any(name.endswith("tokenizer.json") for name in python_parsed)  # the slow path
    python_parsed.clear()
    after = AutoTokenizer.from_pretrained(listed)
    assert not any(name.endswith("tokenizer.json") for name in python_parsed)

    assert after.added_tokens_decoder == before.added_tokens_decoder
    assert after.get_vocab() == before.get_vocab()
    assert after.all_special_tokens == before.all_special_tokens
    assert (after.eos_token_id, after.pad_token_id) == (before.eos_token_id, before.pad_token_id)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Wie spät ist es? <|im_end|> 12:30, naïve café"},
    ]
    expected = before.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert after.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        expected
    )
    assert after(expected)["input_ids"] == before(expected)["input_ids"]
    assert after.decode(after(expected)["input_ids"]) == before.decode(
        before(expected)["input_ids"]
    )


def test_the_default_model_cache_is_at_the_current_conversion(default_model_dir, python_parsed):
    """The converted default model (tests/conftest.py converts it) has the added tokens listed:
    loading its tokenizer parses no tokenizer.json in Python."""
    marker = json.loads((default_model_dir / MARKER).read_text())
    assert marker["version"] == CONVERSION_VERSION
    AutoTokenizer.from_pretrained(default_model_dir)
    assert not any(name.endswith("tokenizer.json") for name in python_parsed)


def test_an_older_conversion_is_not_trusted(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    folder = tmp_path / "converted"
    folder.mkdir()
    marker = {"source_name": source.name, "source_size": 64, "format": "safetensors"}
    (folder / MARKER).write_text(json.dumps(marker))
    assert not is_converted(folder, source)  # version 1 wrote no version
    (folder / MARKER).write_text(json.dumps({**marker, "version": CONVERSION_VERSION}))
    assert is_converted(folder, source)
    (folder / MARKER).write_text(json.dumps({**marker, "source_size": 65, "version": 2}))
    assert not is_converted(folder, source)
