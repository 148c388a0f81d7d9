"""Reading a JSONL file line by line in bounded memory.

A dataset can be gigabytes, and one of its lines can be a mistake of hundreds of megabytes (a
whole file pasted into one field, a binary blob). So the file is never read whole, and a line
longer than ``max_line_bytes`` is never held whole either: it is read in pieces with
``readline(limit)``, reported as an error for its line, and skipped up to the next newline.

Every byte read (including the pieces of a skipped line) is passed to ``on_bytes``, so a caller
can hash the file and report progress in the same single pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line accepted (16 MiB), well above Vertex's per-example token limit in any script."""

_SKIP_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ReadError:
    """A line that cannot be read as text: too long or not UTF-8."""

    code: str
    """``line_too_long`` or ``invalid_utf8``."""
    message: str


def iter_lines(
    stream: BinaryIO,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    on_bytes: Callable[[bytes], None] | None = None,
) -> Iterator[tuple[int, str | ReadError]]:
    """Yield ``(line_number, text or ReadError)`` for each non-blank line of a binary stream.

    Line numbers are 1-based physical lines, so blank (whitespace-only) lines are skipped but
    still counted. The text is the decoded line, newline included (JSON ignores it); a UTF-8 BOM
    at the start of the file is dropped. A final line without a newline is a line like any other.
    The text is yielded rather than the raw bytes because decoding is how invalid UTF-8 is found,
    and callers would only decode it a second time.
    """
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if on_bytes is not None:
            on_bytes(raw)
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        content_length = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
        if content_length > max_line_bytes:
            length, raw = len(raw), b""  # let go of the first piece before reading on
            length += _skip_rest_of_line(stream, on_bytes)
            yield (
                number,
                ReadError(
                    "line_too_long",
                    f"line is {_size(length)}, longer than the limit of {_size(max_line_bytes)}; "
                    "it was skipped without being read whole",
                ),
            )
            continue
        if not raw.strip():
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                ReadError(
                    "invalid_utf8", f"invalid UTF-8 at byte {exc.start} of the line: {exc.reason}"
                ),
            )


def _skip_rest_of_line(stream: BinaryIO, on_bytes: Callable[[bytes], None] | None) -> int:
    """Consume the stream through the next newline, in pieces; return the bytes skipped before it."""
    skipped = 0
    while True:
        piece = stream.readline(_SKIP_CHUNK)
        if not piece:
            return skipped
        if on_bytes is not None:
            on_bytes(piece)
        if piece.endswith(b"\n"):
            return skipped + len(piece) - 1
        skipped += len(piece)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"
