"""Reinforcement fine-tuning data: prompts with the fields their graders read.

One line per prompt, in a prompt format (:mod:`tunelab.data.preference`: Vertex's
``{"input_text"}``, Gemini/OpenAI ``{"messages": [..., a user turn last]}`` or Gemini's
``{"systemInstruction"?, "contents": [..., a user turn last]}``), plus any other fields, which
the grader reads as ``{{item.FIELD}}``::

    {"messages": [{"role": "user", "content": "What year did the bridge open? ..."}],
     "answer": 1932}
    {"systemInstruction": {"parts": [{"text": "Answer with a year."}]},
     "contents": [{"role": "user", "parts": [{"text": "When did the bridge open?"}]}],
     "answer": 1932}

The whole line is the grader's ``item``. Validation reports, besides every problem of a prompt
file, every line missing a field the grader reads, with its number and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.data.preference import EncodedPrompt, load_prompts, validate_prompt_file
from tunelab.data.reader import DEFAULT_MAX_LINE_BYTES, ReadError, iter_lines
from tunelab.data.validation import DatasetValidationError, ValidationReport


def _objects(path: Path) -> dict[int, dict[str, Any]]:
    """Line number -> the decoded JSON object, for lines that are objects."""
    out = {}
    with open(path, "rb") as stream:
        for line, text in iter_lines(stream, max_line_bytes=DEFAULT_MAX_LINE_BYTES):
            if isinstance(text, ReadError):
                continue
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict):
                out[line] = obj
    return out


def _check_fields(path: Path, report: ValidationReport, grader) -> None:
    from tunelab.graders.templates import missing_fields

    fields = grader.fields()
    if not fields:
        return
    for line, obj in _objects(path).items():
        for missing in missing_fields(fields, obj):
            report.add_error(
                line, "missing_field", missing, f"the grader reads {{{{item.{missing}}}}}"
            )


def validate_rft_file(
    path: str | Path,
    tokenizer: Any | None,
    grader,
    *,
    prompt_sequence_length: int = 512,
    instruction: str | None = None,
) -> ValidationReport:
    """Check an RFT JSONL file against its grader's fields; never raises for bad content."""
    report = validate_prompt_file(
        path, tokenizer, prompt_sequence_length=prompt_sequence_length, instruction=instruction
    )
    _check_fields(Path(path), report, grader)
    return report


def load_rft(
    path: str | Path,
    tokenizer: Any,
    grader,
    *,
    prompt_sequence_length: int = 512,
    instruction: str | None = None,
) -> tuple[list[EncodedPrompt], list[dict[str, Any]], ValidationReport]:
    """Encoded prompts, each one's line as the grader's item, and the report; raises
    DatasetValidationError on any bad line."""
    report = validate_rft_file(
        path,
        tokenizer,
        grader,
        prompt_sequence_length=prompt_sequence_length,
        instruction=instruction,
    )
    if not report.ok:
        raise DatasetValidationError(report)
    prompts, report = load_prompts(
        path, tokenizer, prompt_sequence_length=prompt_sequence_length, instruction=instruction
    )
    objects = _objects(Path(path))
    return prompts, [objects[p.line] for p in prompts], report
