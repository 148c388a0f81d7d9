"""The evaluation set: a supervised JSONL file, validated like a training set, maybe sampled.

Any format training accepts is accepted. Each example's last model turn is the reference; what
comes before it (system instruction, user turns, earlier model turns) is the prompt. The file is
validated first, with the same checks as training and every bad line reported
(:class:`tunelab.data.validation.DatasetValidationError`), before any model is loaded, and
examples training would drop (no model-turn token within ``max_seq_length``) are left out.

A set larger than ``max_examples`` is sampled uniformly without replacement with a fixed seed,
then kept in file order, so the same command evaluates the same examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.data.example import Example
from tunelab.data.formats import parse_line
from tunelab.data.reader import iter_lines
from tunelab.data.template import encode
from tunelab.data.validation import (
    DEFAULT_MAX_SEQ_LENGTH,
    DatasetValidationError,
    ValidationReport,
    validate_file,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalExample:
    example: Example
    reference: str
    """The content of the last model turn."""

    @property
    def line(self) -> int:
        return self.example.line

    @property
    def prompt(self) -> list[dict[str, str]]:
        """Chat messages up to (not including) the reference turn."""
        return self.example.to_messages()[:-1]

    @property
    def prompt_text(self) -> str:
        """The prompt's text (system and user turns, earlier model turns), for inference of the
        task and for display."""
        return "\n".join(t.content for t in self.example.turns[:-1])


@dataclass(frozen=True)
class EvalSet:
    path: Path
    examples: list[EvalExample]
    """The examples to evaluate: all of them, or a sample."""
    population: list[EvalExample]
    """Every usable example in the file (task inference and labels look at all of them)."""
    validation: ValidationReport

    @property
    def available(self) -> int:
        return len(self.population)

    @property
    def sampled(self) -> bool:
        return len(self.examples) < self.available


def read_eval_set(
    path: str | Path,
    tokenizer,
    *,
    max_examples: int | None = 500,
    seed: int = 0,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
) -> EvalSet:
    """Validate ``path`` (raising on any bad line), then read and sample its examples.

    ``max_examples=None`` keeps every example.
    """
    path = Path(path)
    report = validate_file(path, tokenizer, max_seq_length=max_seq_length)
    if not report.ok:
        raise DatasetValidationError(report)
    examples: list[EvalExample] = []
    with open(path, "rb") as stream:
        for line, text in iter_lines(stream):
            parsed = parse_line(text, line) if isinstance(text, str) else None
            if not isinstance(parsed, Example):
                raise RuntimeError(f"{path}:{line} changed while it was being read")
            if report.dropped and encode(tokenizer, parsed, max_seq_length).trained_tokens == 0:
                continue  # training drops it too; the report's warnings count it
            examples.append(EvalExample(parsed, parsed.turns[-1].content))
    chosen = examples
    if max_examples is not None and len(examples) > max_examples:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(examples), max_examples, replace=False))
        chosen = [examples[i] for i in keep]
        log.debug("sampled %d of %d examples (seed %d)", max_examples, len(examples), seed)
    return EvalSet(path=path, examples=chosen, population=examples, validation=report)
