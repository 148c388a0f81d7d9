"""Chat templating and the loss mask: which tokens the model is trained to produce.

Every example is rendered with the base model's own chat template, exactly as ``predict`` and
the server will render a prompt, and tokenized once. The loss mask covers the model turns only
(their content and the end-of-turn token that teaches the model to stop), never the system
instruction, the user turns or the template's role headers.

How the mask is found without knowing the template: for model turn ``i`` the rendered text of
``turns[:i]`` with a generation prompt is a prefix of the full text, and so is the rendering of
``turns[:i+1]``; the characters between the two are the model's turn. Token offsets then map
those character spans to tokens. This holds for any template that renders a conversation as the
concatenation of its turns (ChatML, Llama 3, Gemma, Mistral...); one that does not is refused
with a clear error instead of being trained with a wrong mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunelab.data.example import Example


class TemplateError(ValueError):
    """The base model's chat template cannot express an example with a reliable loss mask."""


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: np.ndarray
    """(T,) int64 token ids of the rendered conversation, after truncation."""
    loss_mask: np.ndarray
    """(T,) bool, True where the token belongs to a model turn and carries loss."""
    full_length: int
    """Token count before truncation."""
    line: int

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return int(self.loss_mask.sum())


def render(tokenizer, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """The example as template text, and the character spans of its model turns."""
    messages = example.to_messages()
    text = _apply(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], add_generation_prompt=True)
        through = _apply(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise TemplateError(
                "the base model's chat template does not render a conversation as the "
                "concatenation of its turns, so the model turns cannot be located for the loss"
            )
        # Drop whitespace the template adds after the end-of-turn marker: the model should learn
        # to emit the marker, not the separator that follows it.
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def encode(tokenizer, example: Example, max_seq_length: int) -> Encoded:
    text, spans = render(tokenizer, example)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        # A token belongs to the turn if it starts inside it (a token straddling the header and
        # the content counts as content).
        mask |= (starts >= lo) & (starts < hi)
    full = len(ids)
    if full > max_seq_length:
        ids, mask = ids[:max_seq_length], mask[:max_seq_length]
    return Encoded(input_ids=ids, loss_mask=mask, full_length=full, line=example.line)


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt for generation, rendered exactly as training renders it."""
    text = _apply(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _apply(tokenizer, messages, add_generation_prompt: bool) -> str:
    if not messages:
        # Some templates fail on an empty conversation; the empty prefix renders as "".
        try:
            return (
                tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=False) or ""
            )
        except Exception:
            return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
