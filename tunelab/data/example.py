"""The one example type every supported JSONL format is parsed into.

Whatever the file's format (Vertex text, Gemini ``messages`` or ``contents``, OpenAI chat), an
example is a conversation: an optional system instruction, then user and model turns that
alternate, starting with the user and ending with the model. Roles use Vertex's names
(``model``, not ``assistant``); the chat template maps them to the base model's own names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "model"]


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Example:
    turns: tuple[Turn, ...]
    """System turn (optional, first), then user/model alternating, last one a model turn."""
    line: int
    """1-based line number in the source file, for error messages and statistics."""
    format: str
    """Which format the line was written in: ``text``, ``gemini_messages``, ``gemini_contents``,
    ``openai_chat``."""

    @property
    def system(self) -> str | None:
        return self.turns[0].content if self.turns and self.turns[0].role == "system" else None

    def to_messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template messages (``model`` becomes ``assistant``)."""
        return [
            {"role": "assistant" if t.role == "model" else t.role, "content": t.content}
            for t in self.turns
        ]
