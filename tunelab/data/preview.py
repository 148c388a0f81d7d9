"""The first examples of a supervised dataset as the model will see them: each rendered through
the base model's chat template, with the character spans that carry the loss (the model turns).

What the Studio's dataset preview shows, so a user sees the template, the system turn and what
is trained before spending a job on it. Bad lines are shown with their problems, not skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.formats import parse_line
from tunelab.data.reader import ReadError, iter_lines
from tunelab.data.template import TemplateError, render

MAX_PREVIEW_ROWS = 20


def preview_file(path: Path, tokenizer: Any, rows: int = 5) -> list[dict[str, Any]]:
    """Up to ``rows`` lines: ``{"line", "text", "trained_spans": [[start, end], ...]}`` for an
    example, ``{"line", "problems": [...]}`` for a line that is not one."""
    out: list[dict[str, Any]] = []
    with open(path, "rb") as stream:
        for number, text in iter_lines(stream):
            if len(out) >= min(rows, MAX_PREVIEW_ROWS):
                break
            if isinstance(text, ReadError):
                out.append({"line": number, "problems": [text.message]})
                continue
            parsed = parse_line(text, number)
            if isinstance(parsed, list):
                out.append({"line": number, "problems": [p.message for p in parsed]})
                continue
            try:
                rendered, spans = render(tokenizer, parsed)
            except TemplateError as exc:
                out.append({"line": number, "problems": [str(exc)]})
                continue
            out.append(
                {"line": number, "text": rendered, "trained_spans": [list(s) for s in spans]}
            )
    return out
