"""Validating a supervised-tuning JSONL file in one streaming pass, reporting every bad line.

A file with any error never starts training: ``load_supervised`` raises
:class:`DatasetValidationError` listing the errors by file, line and field. The same pass hashes
the file (so a job can record exactly which bytes it trained on) and counts tokens the way
training will see them, through :func:`tunelab.data.template.encode`:

- an example over ``max_example_tokens`` (Vertex's per-example limit) is an error ``too_long``;
- an example over ``max_seq_length`` is *truncated*, or *dropped* when truncation leaves no
  model-turn token to train on: statistics and warnings, not errors;
- ``billable_tokens`` is total tokens x epochs, the quantity Vertex bills.

Memory stays bounded: the file is streamed (see :mod:`tunelab.data.reader`) and statistics are
running sums, except in ``load_supervised`` which keeps the encoded examples it returns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError

from tunelab.data.example import Example
from tunelab.data.formats import Problem, parse_line
from tunelab.data.reader import DEFAULT_MAX_LINE_BYTES, ReadError, iter_lines
from tunelab.data.template import Encoded, TemplateError, encode

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 1024
MAX_EXAMPLE_TOKENS = 32768
"""Vertex's documented per-example token limit for Gemini supervised tuning."""
MIN_EXAMPLES = 16
"""Vertex refuses a tuning dataset with fewer examples; it recommends 100 to 500."""
RECOMMENDED_EXAMPLES = (100, 500)

_PROGRESS_EVERY = 1 << 20  # bytes between progress callbacks
_HUGE_TEXT = 1 << 20  # characters: above this, count tokens in pieces before encoding
_PIECE = 1 << 18


@dataclass
class LineError:
    """One problem with one line of a dataset (line 0: the file as a whole)."""

    line: int
    code: str
    field: str | None
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = self.file or "line"
        where = f"{where}:{self.line}" if self.line else where
        return ": ".join(p for p in (where, self.field, self.message) if p)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "field": self.field, "message": self.message}


@dataclass
class ValidationReport:
    """What one pass over a dataset found: errors, warnings and token statistics."""

    path: str
    sha256: str = ""
    """Of the file's bytes, computed while streaming."""
    tokenizer: str | None = None
    """Name of the tokenizer the tokens were counted with (a folder's last part, never its
    path); None: structure only."""
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    max_example_tokens: int = MAX_EXAMPLE_TOKENS
    epochs: int = 1
    max_errors: int = 1000
    lines: int = 0
    """Non-blank lines read."""
    examples: int = 0
    """Lines that are valid examples (dropped ones included)."""
    formats: dict[str, int] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)
    """The first ``max_errors`` errors; ``error_count`` is the true total."""
    error_count: int = 0
    warnings: list[str] = field(default_factory=list)
    total_tokens: int = 0
    """Tokens of the examples kept for training, after truncation."""
    trained_tokens: int = 0
    """Of those, the tokens on model turns, which carry the loss."""
    tokens_before_truncation: int = 0
    min_tokens: int | None = None
    max_tokens: int | None = None
    truncated: int = 0
    """Examples longer than max_seq_length that keep model-turn tokens after truncation."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Examples left out of training, by reason."""

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def billable_tokens(self) -> int:
        return self.total_tokens * self.epochs

    @property
    def mean_tokens(self) -> float | None:
        return self.tokens_before_truncation / self.examples if self.examples else None

    @property
    def usable_examples(self) -> int:
        return self.examples - sum(self.dropped.values())

    def add_error(self, line: int, code: str, field: str | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, code, field, message, file=self.path))

    def advise_size(self, message: str) -> None:
        """A warning about the set's size, which is advice for a training set only."""
        self.warnings.append(message)
        self.__dict__.setdefault("size_advice", []).append(message)

    def drop_size_advice(self) -> None:
        """Read as a validation or evaluation set: its size advice does not apply."""
        for message in self.__dict__.pop("size_advice", []):
            self.warnings.remove(message)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["errors"] = [e.to_dict() for e in self.errors]
        data.update(
            ok=self.ok,
            usable_examples=self.usable_examples,
            billable_tokens=self.billable_tokens,
            mean_tokens=self.mean_tokens,
        )
        return data


class DatasetValidationError(ValueError):
    """A dataset has errors (or no usable example), so it cannot be trained on."""

    def __init__(self, report: ValidationReport, shown: int = 20) -> None:
        self.report = report
        listed = [f"  {e}" for e in report.errors[:shown]]
        more = report.error_count - len(listed)
        if more:
            listed.append(f"  ... and {more} more (see `tunelab data validate {report.path}`)")
        plural = "s" if report.error_count != 1 else ""
        super().__init__(
            f"{report.path}: {report.error_count} error{plural}:\n" + "\n".join(listed)
        )


def validate_file(
    path: str | Path,
    tokenizer: Any | None,
    *,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    max_example_tokens: int = MAX_EXAMPLE_TOKENS,
    epochs: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Check a supervised JSONL file and count its tokens; never raises for bad content.

    With ``tokenizer=None`` only the structure is checked (no token statistics, no ``too_long``).
    ``progress`` is called with the number of bytes read so far, about once per MiB and at the end.
    """
    report = ValidationReport(
        path=str(path),
        tokenizer=_tokenizer_name(tokenizer),
        max_seq_length=max_seq_length,
        max_example_tokens=max_example_tokens,
        epochs=epochs,
        max_errors=max_errors,
    )
    _scan(Path(path), tokenizer, report, max_line_bytes, progress, keep=None)
    return report


def load_supervised(
    path: str | Path,
    tokenizer: Any,
    *,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    max_example_tokens: int = MAX_EXAMPLE_TOKENS,
    epochs: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Encoded], ValidationReport]:
    """Validate and encode a file for training, in file order, without the dropped examples.

    Raises :class:`DatasetValidationError` if the file has any error, including no usable example.
    """
    if tokenizer is None:
        raise ValueError("load_supervised needs a tokenizer to encode the examples")
    report = ValidationReport(
        path=str(path),
        tokenizer=_tokenizer_name(tokenizer),
        max_seq_length=max_seq_length,
        max_example_tokens=max_example_tokens,
        epochs=epochs,
        max_errors=max_errors,
    )
    kept: list[Encoded] = []
    _scan(Path(path), tokenizer, report, max_line_bytes, progress, keep=kept)
    if not report.ok:
        raise DatasetValidationError(report)
    return kept, report


def _scan(
    path: Path,
    tokenizer: Any | None,
    report: ValidationReport,
    max_line_bytes: int,
    progress: Callable[[int], None] | None,
    keep: list[Encoded] | None,
) -> None:
    """The single pass shared by validate_file and load_supervised; fills ``report``."""
    digest = hashlib.sha256()
    read = reported = 0

    def on_bytes(chunk: bytes) -> None:
        nonlocal read, reported
        digest.update(chunk)
        read += len(chunk)
        if progress is not None and read - reported >= _PROGRESS_EVERY:
            progress(read)
            reported = read

    with open(path, "rb") as stream:
        for line, text in iter_lines(stream, max_line_bytes=max_line_bytes, on_bytes=on_bytes):
            report.lines += 1
            if isinstance(text, ReadError):
                report.add_error(line, text.code, None, text.message)
                continue
            parsed = parse_line(text, line)
            if isinstance(parsed, list):
                for problem in parsed:
                    report.add_error(line, problem.code, problem.field, problem.message)
                continue
            if tokenizer is None:
                _count(report, parsed, None)
                continue
            encoded = _encode(tokenizer, parsed, report.max_seq_length, report.max_example_tokens)
            if isinstance(encoded, Problem):
                report.add_error(line, encoded.code, encoded.field, encoded.message)
                continue
            if _count(report, parsed, encoded) and keep is not None:
                keep.append(encoded)
    if progress is not None:
        progress(read)
    report.sha256 = digest.hexdigest()
    _finish(report)
    log.debug(
        "validated %s: %d examples, %d errors, %d warnings",
        path,
        report.examples,
        report.error_count,
        len(report.warnings),
    )


def _encode(tokenizer: Any, example: Example, max_seq_length: int, limit: int) -> Encoded | Problem:
    """The example as training will see it, or the reason it cannot be trained on."""
    too_long = f"more than {limit} tokens, the limit per example"
    huge = _count_huge(tokenizer, example, limit)
    if huge is not None:
        return Problem("too_long", None, f"{too_long} (counted past {huge} before stopping)")
    try:
        encoded = encode(tokenizer, example, max_seq_length)
    except (TemplateError, JinjaTemplateError) as exc:
        return Problem("template_error", None, f"the chat template cannot render it: {exc}")
    if encoded.full_length > limit:
        return Problem("too_long", None, f"{encoded.full_length} tokens: {too_long}")
    return encoded


def _count_huge(tokenizer: Any, example: Example, limit: int) -> int | None:
    """For a huge example, a token count past ``limit`` found piece by piece, else None.

    Encoding keeps Python objects for every token's offsets, gigabytes for a text of millions of
    tokens, so a text that big is counted in pieces first and stopped as soon as it is over the
    limit. (Counting in pieces can differ from the whole by a token per cut; at a million
    characters no real example is that close to a 32k-token limit.)
    """
    if sum(len(t.content) for t in example.turns) < _HUGE_TEXT:
        return None
    count = 0
    for turn in example.turns:
        for start in range(0, len(turn.content), _PIECE):
            piece = turn.content[start : start + _PIECE]
            count += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
            if count > limit:
                return count
    return None


def _count(report: ValidationReport, example: Example, encoded: Encoded | None) -> bool:
    """Add a valid example to the statistics; return whether it is kept for training."""
    report.examples += 1
    report.formats[example.format] = report.formats.get(example.format, 0) + 1
    if encoded is None:
        return True
    n = encoded.full_length
    report.tokens_before_truncation += n
    report.min_tokens = n if report.min_tokens is None else min(report.min_tokens, n)
    report.max_tokens = n if report.max_tokens is None else max(report.max_tokens, n)
    if encoded.trained_tokens == 0:
        reason = f"no model-turn tokens within max_seq_length={report.max_seq_length}"
        report.dropped[reason] = report.dropped.get(reason, 0) + 1
        return False
    report.truncated += int(encoded.truncated)
    report.total_tokens += len(encoded.input_ids)
    report.trained_tokens += encoded.trained_tokens
    return True


def _finish(report: ValidationReport) -> None:
    """The file-level checks, once every line has been seen."""
    usable = report.usable_examples
    low, high = RECOMMENDED_EXAMPLES
    if report.tokenizer is None:
        report.warnings.append(
            "no tokenizer: only the structure was checked, tokens were not counted"
        )
    if usable == 0:
        if report.lines == 0:
            why = "the file has no lines"
        elif report.examples:
            why = "every example is dropped (see the warnings)"
        else:
            why = "no line is a valid example"
        report.add_error(0, "empty_dataset", None, f"no usable examples: {why}")
    elif usable < MIN_EXAMPLES:
        report.advise_size(
            f"only {_n(usable, 'usable example')}: Vertex requires at least {MIN_EXAMPLES} "
            f"and recommends {low} to {high}"
        )
    elif usable < low:
        report.advise_size(f"{_n(usable, 'usable example')}: {low} to {high} are recommended")
    if report.truncated:
        report.warnings.append(
            f"{_n(report.truncated, 'example')} longer than max_seq_length="
            f"{report.max_seq_length} tokens will be truncated: their ends are not trained on"
        )
    for reason, count in report.dropped.items():
        report.warnings.append(f"{_n(count, 'example')} will be dropped: {reason}")


def _tokenizer_name(tokenizer: Any | None) -> str | None:
    """The tokenizer's name for reports, never a folder: reports reach API clients, and a
    tokenizer loaded from disk has its full path as ``name_or_path``."""
    if tokenizer is None:
        return None
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return Path(name).name if Path(name).is_absolute() or name.startswith("~") else name


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
