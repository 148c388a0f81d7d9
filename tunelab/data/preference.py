"""Preference pairs and prompts, the datasets of RLHF and DPO, validated like supervised data.

Human preference (Vertex AI's RLHF format), one pair per line::

    {"input_text": str, "candidate_0": str, "candidate_1": str, "choice": 0 | 1}
    {"messages": [{"role", "content"}, ... a user turn last], "candidate_0", "candidate_1", "choice"}

``choice`` names the preferred candidate. OpenAI's DPO format is read too, so files made for its
fine-tuning API work unchanged::

    {"input": {"messages": [... a user turn last]},
     "preferred_output": [{"role": "assistant", "content": str}],
     "non_preferred_output": [{"role": "assistant", "content": str}]}
 Prompts (what reinforcement learning samples answers
to, and evaluation prompts)::

    {"input_text": str}     or     {"messages": [..., a user turn last]}
    or Gemini's {"systemInstruction"?: {"parts": [...]}, "contents": [..., a user turn last]}

``messages`` takes Gemini roles (``system``, ``user``, ``model``) or OpenAI's (``assistant``), as
supervised data does; keys a format does not use are ignored (so a supervised file's
``input_text`` lines serve as prompts). The parsers are listed in
``tunelab.data.formats.FORMATS`` under the kinds ``preference`` and ``prompt``, and a file is
read in one streaming pass that reports every bad line with its number, field and reason.

How a pair becomes tokens: the prompt is rendered with the base model's chat template and a
generation prompt (:func:`tunelab.data.template.prompt_ids`, exactly what generation sees); each
candidate is what the template adds for a model turn after it (content and end-of-turn token),
tokenized on its own, so a reward model trained here scores the very token sequences a policy
samples. Prompts keep their last ``prompt_sequence_length`` tokens (the generation header must
survive), candidates their first ``target_sequence_length``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import TemplateError as JinjaTemplateError

from tunelab.data.example import Role, Turn
from tunelab.data.formats import (
    Format,
    Problem,
    _contents_turns,
    _is_object,
    _list,
    _message_turns,
    _string,
    _unknown_role,
    _wrong_type,
    check_turn_alternation,
    parse_line,
)
from tunelab.data.reader import DEFAULT_MAX_LINE_BYTES, ReadError, iter_lines
from tunelab.data.template import Encoded, prompt_ids

if TYPE_CHECKING:
    import torch  # imported where batches are made: parsing stays light

    from tunelab.data.validation import ValidationReport

# ------------------------------------------------------------------------------ parsed lines


@dataclass(frozen=True, slots=True)
class PreferenceExample:
    prompt: tuple[Turn, ...]
    """System turn (optional), then user/model turns alternating, the last one a user turn."""
    chosen: str
    rejected: str
    line: int
    format: str
    """``preference_text``, ``preference_messages`` or ``preference_openai``."""


@dataclass(frozen=True, slots=True)
class PromptExample:
    prompt: tuple[Turn, ...]
    line: int
    format: str
    """``prompt_text``, ``prompt_messages`` or ``prompt_contents``."""


def _parse_preference_text(obj: dict[str, Any], line: int) -> PreferenceExample | list[Problem]:
    problems: list[Problem] = []
    text = _string(obj, "input_text", "input_text", problems)
    candidates = _candidates(obj, problems)
    if problems:
        return problems
    return PreferenceExample((Turn("user", text),), *candidates, line, "preference_text")


def _parse_preference_messages(obj: dict[str, Any], line: int) -> PreferenceExample | list[Problem]:
    problems: list[Problem] = []
    turns = _prompt_messages(obj, problems)
    candidates = _candidates(obj, problems)
    if problems:
        return problems
    return PreferenceExample(turns, *candidates, line, "preference_messages")


def _parse_preference_openai(obj: dict[str, Any], line: int) -> PreferenceExample | list[Problem]:
    """OpenAI's DPO line: the conversation under ``input.messages``, each answer a one-message
    list with an assistant turn."""
    problems: list[Problem] = []
    turns: tuple[Turn, ...] = ()
    if "input" not in obj:
        problems.append(Problem("missing_field", "input", "missing required field"))
    elif _is_object(obj["input"], "input", problems):
        inner: list[Problem] = []
        turns = _prompt_messages(obj["input"], inner)
        # The shared checker names fields from the conversation's root; here it sits in "input".
        problems += [
            Problem(p.code, f"input.{p.field}" if p.field else "input", p.message) for p in inner
        ]
    chosen = _openai_answer(obj, "preferred_output", problems)
    rejected = _openai_answer(obj, "non_preferred_output", problems)
    if chosen is not None and rejected is not None and chosen.strip() == rejected.strip():
        problems.append(
            Problem(
                "identical_candidates",
                "non_preferred_output",
                "the preferred and non-preferred outputs are the same text: no preference",
            )
        )
    if problems:
        return problems
    return PreferenceExample(turns, chosen, rejected, line, "preference_openai")


def _openai_answer(obj: dict[str, Any], key: str, problems: list[Problem]) -> str | None:
    """The text of ``[{"role": "assistant", "content": str}]`` under ``key``."""
    messages = _list(obj, key, key, problems)
    if messages is None:
        return None
    if len(messages) != 1:
        problems.append(
            Problem(
                "wrong_length",
                key,
                f"expected exactly one assistant message, got {len(messages)}",
            )
        )
        return None
    path = f"{key}[0]"
    if not _is_object(messages[0], path, problems):
        return None
    role = _string(messages[0], "role", f"{path}.role", problems)
    if role is not None and role != "assistant":
        problems.append(_unknown_role(role, f"{path}.role", ("assistant",)))
    content = _string(messages[0], "content", f"{path}.content", problems)
    return content if role == "assistant" else None


def _parse_prompt_text(obj: dict[str, Any], line: int) -> PromptExample | list[Problem]:
    problems: list[Problem] = []
    text = _string(obj, "input_text", "input_text", problems)
    if problems:
        return problems
    return PromptExample((Turn("user", text),), line, "prompt_text")


def _parse_prompt_messages(obj: dict[str, Any], line: int) -> PromptExample | list[Problem]:
    problems: list[Problem] = []
    turns = _prompt_messages(obj, problems)
    if problems:
        return problems
    return PromptExample(turns, line, "prompt_messages")


def _parse_prompt_contents(obj: dict[str, Any], line: int) -> PromptExample | list[Problem]:
    """Gemini's ``contents`` (and optional ``systemInstruction``), a user turn last."""
    problems: list[Problem] = []
    turns, roles, roles_ok = _contents_turns(obj, problems)
    if roles_ok:
        _check_prompt_order(roles, "contents", problems)
    if problems:
        return problems
    return PromptExample(tuple(turns), line, "prompt_contents")


def _candidates(obj: dict[str, Any], problems: list[Problem]) -> tuple[str, str]:
    """(chosen, rejected) from ``candidate_0``, ``candidate_1`` and ``choice``."""
    first = _string(obj, "candidate_0", "candidate_0", problems)
    second = _string(obj, "candidate_1", "candidate_1", problems)
    choice = obj.get("choice")
    if "choice" not in obj:
        problems.append(Problem("missing_field", "choice", "missing required field"))
    elif isinstance(choice, bool) or not isinstance(choice, int | float):
        problems.append(_wrong_type("choice", "0 or 1", choice))
    elif not isinstance(choice, int) or choice not in (0, 1):
        problems.append(
            Problem(
                "invalid_choice",
                "choice",
                f"must be 0 or 1 (the preferred candidate), got {choice}",
            )
        )
    if first is not None and second is not None and first.strip() == second.strip():
        problems.append(
            Problem(
                "identical_candidates",
                "candidate_1",
                "the two candidates are the same text: the pair expresses no preference",
            )
        )
    if problems:
        return "", ""
    return (first, second) if choice == 0 else (second, first)


def _prompt_messages(obj: dict[str, Any], problems: list[Problem]) -> tuple[Turn, ...]:
    """A conversation to be answered: system first (optional), user/model alternating from the
    user, ending with a user turn."""
    messages = _list(obj, "messages", "messages", problems)
    if messages is None:
        return ()
    turns, roles, roles_ok, _ = _message_turns(messages, problems)
    if roles_ok:
        _check_prompt_order(roles, "messages", problems)
    return tuple(turns)


def _check_prompt_order(roles: list[tuple[str, Role]], where: str, problems: list[Problem]) -> None:
    """Alternating turns (:func:`tunelab.data.formats.check_turn_alternation`) ending with a
    user turn: the prompt the model answers."""
    spoken = check_turn_alternation(roles, problems)
    if not spoken:
        problems.append(Problem("no_user_turn", where, "no user turn: nothing to answer"))
    elif spoken[-1][1] != "user":
        problems.append(
            Problem(
                "turn_order",
                spoken[-1][0],
                "the last turn must be a user turn (the prompt the model answers)",
            )
        )


PREFERENCE_FORMATS = (
    Format(
        "preference_text",
        ("input_text",),
        '{"input_text", "candidate_0", "candidate_1", "choice": 0|1}',
        _parse_preference_text,
    ),
    Format(
        "preference_messages",
        ("messages",),
        '{"messages": [... a user turn last], "candidate_0", "candidate_1", "choice": 0|1}',
        _parse_preference_messages,
    ),
    Format(
        "preference_openai",
        ("input", "preferred_output", "non_preferred_output"),
        '{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content"}], '
        '"non_preferred_output": [...]}',
        _parse_preference_openai,
    ),
)
PROMPT_FORMATS = (
    Format("prompt_text", ("input_text",), '{"input_text"}', _parse_prompt_text),
    Format(
        "prompt_messages",
        ("messages",),
        '{"messages": [{"role", "content"}, ... a user turn last]}',
        _parse_prompt_messages,
    ),
    Format(
        "prompt_contents",
        ("contents", "systemInstruction", "system_instruction"),
        '{"systemInstruction"?: {"parts"}, "contents": [{"role", "parts"}, ... a user turn last]}',
        _parse_prompt_contents,
    ),
)

# ------------------------------------------------------------------------------ encoded data


@dataclass(frozen=True, slots=True)
class EncodedPair:
    prompt_ids: np.ndarray
    """(P,) int64: the rendered prompt with its generation header, left-truncated."""
    chosen_ids: np.ndarray
    """(C,) int64: the preferred answer and end-of-turn token, right-truncated."""
    rejected_ids: np.ndarray
    line: int
    prompt_cut: bool
    """Whether the prompt lost its first tokens to truncation."""
    chosen_cut: bool
    """Whether the candidate lost tokens (and so its end-of-turn token) to truncation."""
    rejected_cut: bool


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    input_ids: np.ndarray
    """(P,) int64: rendered prompt with generation header, left-truncated."""
    line: int
    text: str
    """The last user turn, for reports."""


def with_instruction(turns: tuple[Turn, ...], instruction: str | None) -> tuple[Turn, ...]:
    """Vertex's ``instruction``: prepended, with a blank line, to the first user turn."""
    if not instruction:
        return turns
    out, done = [], False
    for turn in turns:
        if turn.role == "user" and not done:
            turn, done = Turn("user", f"{instruction}\n\n{turn.content}"), True
        out.append(turn)
    return tuple(out)


def messages_of(turns: tuple[Turn, ...]) -> list[dict[str, str]]:
    return [
        {"role": "assistant" if t.role == "model" else t.role, "content": t.content} for t in turns
    ]


def encode_prompt(
    tokenizer, example: PromptExample, prompt_sequence_length: int, instruction: str | None = None
) -> EncodedPrompt:
    turns = with_instruction(example.prompt, instruction)
    ids = np.asarray(prompt_ids(tokenizer, messages_of(turns)), dtype=np.int64)
    return EncodedPrompt(ids[-prompt_sequence_length:], example.line, turns[-1].content)


def encode_pair(
    tokenizer,
    example: PreferenceExample,
    prompt_sequence_length: int,
    target_sequence_length: int,
    instruction: str | None = None,
) -> EncodedPair:
    """Tokens of a pair: the prompt as generation sees it, and each candidate as the template
    renders a model turn after that prompt (raises TemplateError if it cannot)."""
    from tunelab.data.template import TemplateError

    messages = messages_of(with_instruction(example.prompt, instruction))
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answers = []
    for candidate in (example.chosen, example.rejected):
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": candidate}],
            tokenize=False,
            add_generation_prompt=False,
        )
        if not full.startswith(prefix):
            raise TemplateError(
                "the chat template does not render the answer after the generation prompt, so "
                "the answer's tokens cannot be separated from the prompt's"
            )
        # Whitespace after the end-of-turn marker is the template's separator, not the answer.
        ids = tokenizer(full[len(prefix) :].rstrip(), add_special_tokens=False)["input_ids"]
        answers.append(np.asarray(ids, dtype=np.int64))
    prompt = np.asarray(tokenizer(prefix, add_special_tokens=False)["input_ids"], dtype=np.int64)
    chosen, rejected = answers
    return EncodedPair(
        prompt_ids=prompt[-prompt_sequence_length:],
        chosen_ids=chosen[:target_sequence_length],
        rejected_ids=rejected[:target_sequence_length],
        line=example.line,
        prompt_cut=len(prompt) > prompt_sequence_length,
        chosen_cut=len(chosen) > target_sequence_length,
        rejected_cut=len(rejected) > target_sequence_length,
    )


# ------------------------------------------------------------------------------ reading files


def validate_preference_file(
    path: str | Path,
    tokenizer: Any | None,
    *,
    prompt_sequence_length: int = 512,
    target_sequence_length: int = 512,
    instruction: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
) -> ValidationReport:
    """Check a preference JSONL file (and count its tokens with a tokenizer); never raises for
    bad content."""
    report = _report(path, tokenizer, prompt_sequence_length + target_sequence_length, max_errors)
    encode = _pair_encoder(tokenizer, prompt_sequence_length, target_sequence_length, instruction)
    _scan(Path(path), "preference", report, encode, None, max_line_bytes)
    return report


def load_preference(
    path: str | Path,
    tokenizer: Any,
    *,
    prompt_sequence_length: int = 512,
    target_sequence_length: int = 512,
    instruction: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
) -> tuple[list[EncodedPair], ValidationReport]:
    """Validate and encode a preference file; raises DatasetValidationError on any error."""
    report = _report(path, tokenizer, prompt_sequence_length + target_sequence_length, max_errors)
    encode = _pair_encoder(tokenizer, prompt_sequence_length, target_sequence_length, instruction)
    kept: list[EncodedPair] = []
    _scan(Path(path), "preference", report, encode, kept, max_line_bytes)
    if not report.ok:
        from tunelab.data.validation import DatasetValidationError

        raise DatasetValidationError(report)
    return kept, report


def validate_prompt_file(
    path: str | Path,
    tokenizer: Any | None,
    *,
    prompt_sequence_length: int = 512,
    instruction: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
) -> ValidationReport:
    """Check a prompt JSONL file; never raises for bad content."""
    report = _report(path, tokenizer, prompt_sequence_length, max_errors)
    encode = _prompt_encoder(tokenizer, prompt_sequence_length, instruction)
    _scan(Path(path), "prompt", report, encode, None, max_line_bytes)
    return report


def load_prompts(
    path: str | Path,
    tokenizer: Any,
    *,
    prompt_sequence_length: int = 512,
    instruction: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = 1000,
) -> tuple[list[EncodedPrompt], ValidationReport]:
    """Validate and encode a prompt file; raises DatasetValidationError on any error."""
    report = _report(path, tokenizer, prompt_sequence_length, max_errors)
    encode = _prompt_encoder(tokenizer, prompt_sequence_length, instruction)
    kept: list[EncodedPrompt] = []
    _scan(Path(path), "prompt", report, encode, kept, max_line_bytes)
    if not report.ok:
        from tunelab.data.validation import DatasetValidationError

        raise DatasetValidationError(report)
    return kept, report


@dataclass(frozen=True)
class _Counted:
    """What an encoder tells the scan about one valid line."""

    item: EncodedPair | EncodedPrompt | None
    tokens: int
    full_tokens: int
    answer_tokens: int
    truncated: bool
    dropped: str | None = None


Encoder = Callable[[Any], "_Counted | Problem"]


def _pair_encoder(tokenizer, prompt_len: int, target_len: int, instruction: str | None) -> Encoder:
    def encode(example: PreferenceExample) -> _Counted | Problem:
        try:
            pair = encode_pair(tokenizer, example, prompt_len, target_len, instruction)
        except (ValueError, JinjaTemplateError) as exc:
            return Problem("template_error", None, f"the chat template cannot render it: {exc}")
        answers = len(pair.chosen_ids) + len(pair.rejected_ids)
        dropped = None
        if np.array_equal(pair.chosen_ids, pair.rejected_ids):
            dropped = f"candidates identical within target_sequence_length={target_len}"
        return _Counted(
            pair,
            tokens=2 * len(pair.prompt_ids) + answers,
            full_tokens=len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)),
            answer_tokens=answers,
            truncated=pair.prompt_cut or pair.chosen_cut or pair.rejected_cut,
            dropped=dropped,
        )

    return encode


def _prompt_encoder(tokenizer, prompt_len: int, instruction: str | None) -> Encoder:
    def encode(example: PromptExample) -> _Counted | Problem:
        turns = with_instruction(example.prompt, instruction)
        try:
            full = prompt_ids(tokenizer, messages_of(turns))
        except (ValueError, JinjaTemplateError) as exc:
            return Problem("template_error", None, f"the chat template cannot render it: {exc}")
        ids = np.asarray(full[-prompt_len:], dtype=np.int64)
        item = EncodedPrompt(ids, example.line, turns[-1].content)
        return _Counted(item, len(ids), len(full), 0, len(full) > prompt_len)

    return encode


def _report(path, tokenizer, max_seq_length: int, max_errors: int) -> ValidationReport:
    # validation imports formats, which imports this module: import it when first used.
    from tunelab.data.validation import ValidationReport, _tokenizer_name

    name = _tokenizer_name(tokenizer)
    return ValidationReport(
        path=str(path), tokenizer=name, max_seq_length=max_seq_length, max_errors=max_errors
    )


def _scan(
    path: Path,
    kind: str,
    report: ValidationReport,
    encode: Encoder | None,
    keep: list | None,
    max_line_bytes: int,
) -> None:
    """One streaming pass: hash, parse every line, encode the valid ones, count tokens."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for line, text in iter_lines(stream, max_line_bytes=max_line_bytes, on_bytes=digest.update):
            report.lines += 1
            if isinstance(text, ReadError):
                report.add_error(line, text.code, None, text.message)
                continue
            parsed = parse_line(text, line, kind)
            if isinstance(parsed, list):
                for problem in parsed:
                    report.add_error(line, problem.code, problem.field, problem.message)
                continue
            if report.tokenizer is None:
                report.examples += 1
                report.formats[parsed.format] = report.formats.get(parsed.format, 0) + 1
                continue
            counted = encode(parsed)
            if isinstance(counted, Problem):
                report.add_error(line, counted.code, counted.field, counted.message)
                continue
            report.examples += 1
            report.formats[parsed.format] = report.formats.get(parsed.format, 0) + 1
            n = counted.full_tokens
            report.tokens_before_truncation += n
            report.min_tokens = n if report.min_tokens is None else min(report.min_tokens, n)
            report.max_tokens = n if report.max_tokens is None else max(report.max_tokens, n)
            if counted.dropped:
                report.dropped[counted.dropped] = report.dropped.get(counted.dropped, 0) + 1
                continue
            report.truncated += int(counted.truncated)
            report.total_tokens += counted.tokens
            report.trained_tokens += counted.answer_tokens
            if keep is not None:
                keep.append(counted.item)
    report.sha256 = digest.hexdigest()
    _finish(report, "pair" if kind == "preference" else "prompt")


def _finish(report: ValidationReport, noun: str) -> None:
    from tunelab.data.validation import MIN_EXAMPLES

    usable = report.usable_examples
    if report.tokenizer is None:
        report.warnings.append("no tokenizer: only the structure was checked")
    if usable == 0 and not (report.tokenizer is None and report.examples):
        why = "the file has no lines" if report.lines == 0 else f"no line is a usable {noun}"
        report.add_error(0, "empty_dataset", None, f"no usable {noun}s: {why}")
    elif 0 < usable < MIN_EXAMPLES:
        report.advise_size(f"only {usable} usable {noun}s: at least {MIN_EXAMPLES} advised")
    if report.truncated:
        report.warnings.append(
            f"{report.truncated} {noun}(s) truncated to the sequence-length limits"
        )
    for reason, count in report.dropped.items():
        report.warnings.append(f"{count} {noun}(s) will be dropped: {reason}")


# ------------------------------------------------------------------------------ batching


@dataclass(frozen=True)
class PairBatch:
    input_ids: torch.Tensor
    """(2B, T) right-padded: the B prompt+chosen sequences, then the B prompt+rejected."""
    response_mask: torch.Tensor
    """(2B, T) bool: True at answer tokens."""
    lengths: torch.Tensor
    """(2B,) real lengths; ``lengths - 1`` is each sequence's last token."""
    tokens: int


def sequence(prompt: np.ndarray, answer: np.ndarray) -> Encoded:
    """prompt + answer as one example whose answer tokens are masked in."""
    ids = np.concatenate([prompt, answer])
    mask = np.zeros(len(ids), dtype=bool)
    mask[len(prompt) :] = True
    return Encoded(input_ids=ids, loss_mask=mask, full_length=len(ids), line=0)


def ended(answer: np.ndarray, cut: bool, end_id: int | None) -> np.ndarray:
    """The answer as a reward model reads it: one cut short by the length limit gets the
    end-of-turn token appended, so every score is read at an end-of-turn token."""
    return np.append(answer, end_id) if cut and end_id is not None else answer


def collate_pairs(
    pairs: Sequence[EncodedPair], pad_id: int, end_id: int | None = None
) -> PairBatch:
    """Chosen then rejected sequences, right-padded (no attention mask needed: see batching).
    With ``end_id``, truncated answers are closed with it (:func:`ended`)."""
    import torch

    from tunelab.data.batching import collate

    seqs = [sequence(p.prompt_ids, ended(p.chosen_ids, p.chosen_cut, end_id)) for p in pairs]
    seqs += [sequence(p.prompt_ids, ended(p.rejected_ids, p.rejected_cut, end_id)) for p in pairs]
    batch = collate(seqs, pad_id)
    lengths = torch.tensor([len(s.input_ids) for s in seqs])
    return PairBatch(batch.input_ids, batch.loss_mask, lengths, batch.tokens)


def pair_lengths(pairs: Sequence[EncodedPair]) -> list[int]:
    """A pair's cost for length-grouped batching: its longer sequence."""
    return [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]


__all__ = [
    "EncodedPair",
    "EncodedPrompt",
    "PairBatch",
    "PreferenceExample",
    "PromptExample",
    "collate_pairs",
    "encode_pair",
    "encode_prompt",
    "load_preference",
    "load_prompts",
    "validate_preference_file",
    "validate_prompt_file",
]
