"""Validating whole files: every bad line reported, token statistics, and the training gate."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunelab.data.example import Example, Turn
from tunelab.data.template import encode
from tunelab.data.validation import (
    DatasetValidationError,
    LineError,
    load_supervised,
    validate_file,
)


def text(i: int, answer: str | None = None) -> dict:
    return {"input_text": f"What is {i} + {i}?", "output_text": answer or f"{i + i}"}


def write(tmp_path: Path, lines: list, name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_line_error_str_names_file_line_and_field():
    error = LineError(
        12, "unknown_role", "messages[2].role", "unknown role 'bot'", file="train.jsonl"
    )
    assert str(error) == "train.jsonl:12: messages[2].role: unknown role 'bot'"
    assert (
        str(LineError(3, "invalid_json", None, "invalid JSON", file="t.jsonl"))
        == "t.jsonl:3: invalid JSON"
    )
    assert (
        str(LineError(0, "empty_dataset", None, "no usable examples", file="t.jsonl"))
        == "t.jsonl: no usable examples"
    )


def test_good_file_statistics(tmp_path, tokenizer):
    records = [text(i) for i in range(20)]
    records.append(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    )
    path = write(tmp_path, records)
    seen: list[int] = []
    report = validate_file(path, tokenizer, epochs=3, progress=seen.append)

    assert report.ok and report.errors == [] and report.error_count == 0
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.examples == report.usable_examples == 21
    assert report.formats == {"text": 20, "openai_chat": 1}
    encoded = [
        encode(
            tokenizer,
            Example((Turn("user", r["input_text"]), Turn("model", r["output_text"])), 1, "text"),
            1024,
        )
        for r in records[:20]
    ]
    assert report.total_tokens > sum(len(e.input_ids) for e in encoded)  # plus the chat example
    assert 0 < report.trained_tokens < report.total_tokens
    assert report.billable_tokens == 3 * report.total_tokens
    assert report.min_tokens <= report.mean_tokens <= report.max_tokens
    assert report.truncated == 0 and report.dropped == {}
    assert seen[-1] == path.stat().st_size
    assert any("100 to 500 are recommended" in w for w in report.warnings)
    json.dumps(report.to_dict())  # serialisable


def test_every_bad_line_is_reported_with_its_number(tmp_path, tokenizer):
    lines = [
        text(1),
        "{not json",
        "",
        text(2),
        "[1, 2]",
        {"messages": [{"role": "bot", "content": "x"}, {"role": "model", "content": ""}]},
        text(3),
    ]
    report = validate_file(write(tmp_path, lines), tokenizer)
    assert not report.ok
    found = [(e.line, e.code, e.field) for e in report.errors]
    assert found == [
        (2, "invalid_json", None),
        (5, "not_an_object", None),
        (6, "unknown_role", "messages[0].role"),
        (6, "empty_field", "messages[1].content"),
    ]
    assert report.examples == 3 and report.lines == 6


def test_bom_and_missing_final_newline(tmp_path, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(text(1)).encode() + b"\n" + json.dumps(text(2)).encode()
    )
    report = validate_file(path, tokenizer)
    assert report.ok and report.examples == 2


def test_invalid_utf8_and_too_long_lines_are_errors(tmp_path):
    path = tmp_path / "bytes.jsonl"
    good = json.dumps(text(1)).encode()
    path.write_bytes(
        good
        + b"\n"
        + b'{"input_text": "\xff"}\n'
        + b'{"input_text": "'
        + b"a" * 5000
        + b'"}\n'
        + good
    )
    report = validate_file(path, None, max_line_bytes=1000)
    assert [(e.line, e.code) for e in report.errors] == [(2, "invalid_utf8"), (3, "line_too_long")]
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_truncated_and_dropped_examples(tmp_path, tokenizer):
    long_answer = text(1, answer="word " * 200)
    long_prompt = {"input_text": "word " * 200, "output_text": "yes"}
    report = validate_file(
        write(tmp_path, [text(2), long_answer, long_prompt]), tokenizer, max_seq_length=64
    )
    assert report.ok
    assert report.truncated == 1
    assert report.dropped == {"no model-turn tokens within max_seq_length=64": 1}
    assert report.examples == 3 and report.usable_examples == 2
    assert report.max_tokens > 200 and report.total_tokens <= 2 * 64
    assert any("truncated" in w for w in report.warnings)
    assert any("1 example will be dropped" in w for w in report.warnings)


def test_example_over_the_token_limit_is_an_error(tmp_path, tokenizer):
    report = validate_file(
        write(tmp_path, [text(1), text(2, answer="word " * 100)]), tokenizer, max_example_tokens=60
    )
    [error] = report.errors
    assert (error.line, error.code) == (2, "too_long")
    assert "more than 60 tokens" in error.message


def test_huge_example_is_counted_in_pieces(tmp_path, tokenizer):
    report = validate_file(write(tmp_path, [text(1), text(2, answer="word " * 250_000)]), tokenizer)
    [error] = report.errors
    assert (error.line, error.code) == (2, "too_long")
    assert "counted past" in error.message


def test_fewer_than_16_examples_warns(tmp_path, tokenizer):
    report = validate_file(write(tmp_path, [text(i) for i in range(5)]), tokenizer)
    assert report.ok
    assert any("at least 16" in w and "100 to 500" in w for w in report.warnings)


def test_stored_errors_are_capped_but_all_counted(tmp_path):
    report = validate_file(write(tmp_path, [text(1)] + ["oops"] * 30), None, max_errors=10)
    assert len(report.errors) == 10 and report.error_count == 30
    assert report.errors[0].line == 2


def test_without_tokenizer_only_structure_is_checked(tmp_path):
    report = validate_file(write(tmp_path, [text(1), text(2)]), None)
    assert report.ok and report.examples == 2 and report.tokenizer is None
    assert report.total_tokens == 0 and report.min_tokens is None
    assert any("no tokenizer" in w for w in report.warnings)


def test_load_supervised_keeps_usable_examples_in_order(tmp_path, tokenizer):
    long_prompt = {"input_text": "word " * 200, "output_text": "yes"}
    encoded, report = load_supervised(
        write(tmp_path, [text(1), long_prompt, "", text(3)]), tokenizer, max_seq_length=64
    )
    assert [e.line for e in encoded] == [1, 4]
    assert report.usable_examples == 2
    assert all(e.trained_tokens > 0 for e in encoded)


def test_load_supervised_refuses_a_file_with_errors(tmp_path, tokenizer):
    path = write(tmp_path, [text(1), "oops", {"input_text": "a"}])
    with pytest.raises(DatasetValidationError) as caught:
        load_supervised(path, tokenizer)
    message = str(caught.value)
    assert "2 errors" in message
    assert f"{path}:2: invalid JSON" in message
    assert f"{path}:3: output_text: missing required field" in message
    assert caught.value.report.error_count == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_empty_dataset(tmp_path, tokenizer, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetValidationError) as caught:
        load_supervised(path, tokenizer)
    [error] = caught.value.report.errors
    assert (error.line, error.code) == (0, "empty_dataset")


def test_dataset_with_every_example_dropped_is_empty(tmp_path, tokenizer):
    long_prompt = {"input_text": "word " * 200, "output_text": "yes"}
    report = validate_file(write(tmp_path, [long_prompt]), tokenizer, max_seq_length=64)
    assert [e.code for e in report.errors] == ["empty_dataset"]


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from tunelab.data.validation import validate_file

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = validate_file(sys.argv[1], None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "report": report.to_dict()}))
    """
)


def test_200_mb_line_is_rejected_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    chunk = b"a" * (1 << 20)
    with open(path, "wb") as fh:
        fh.write(b'{"input_text": "')
        for _ in range(200):
            fh.write(chunk)
        fh.write(b'", "output_text": "b"}\n')
        fh.write(json.dumps(text(1)).encode() + b"\n")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    errors = result["report"]["errors"]
    assert [(e["line"], e["code"]) for e in errors] == [(1, "line_too_long")]
    assert "200.0 MiB" in errors[0]["message"]
    assert result["report"]["examples"] == 1
    assert result["grew_kib"] < 100 * 1024
