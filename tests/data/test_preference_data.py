"""Preference pairs and prompts: every bad line reported with its number, field and reason;
pairs and prompts tokenized exactly as generation sees them; truncation and batching."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.data.formats import FORMATS, parse_line
from tunelab.data.preference import (
    PreferenceExample,
    collate_pairs,
    encode_pair,
    load_preference,
    load_prompts,
    validate_preference_file,
    validate_prompt_file,
)
from tunelab.data.template import prompt_ids
from tunelab.data.validation import DatasetValidationError

PAIR = {
    "input_text": "Capital of Peru?",
    "candidate_0": "Lima.",
    "candidate_1": "It is Lima, a city.",
    "choice": 0,
}


def write(tmp_path: Path, lines: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def user(text):
    return {"role": "user", "content": text}


def test_kinds_are_registered_beside_supervised():
    assert {"supervised", "preference", "prompt"} <= set(FORMATS)
    parsed = parse_line(json.dumps({**PAIR, "choice": 1}), 3, kind="preference")
    assert isinstance(parsed, PreferenceExample)
    assert (parsed.chosen, parsed.rejected, parsed.line) == ("It is Lima, a city.", "Lima.", 3)
    assert parse_line(json.dumps({"input_text": "Hi"}), 1, kind="prompt").format == "prompt_text"


def test_chat_form_keeps_the_conversation():
    line = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            {"role": "assistant", "content": "Hello!"},
            user("Capital of Peru?"),
        ],
        "candidate_0": "Lima.",
        "candidate_1": "Lima, of course.",
        "choice": 0,
    }
    parsed = parse_line(json.dumps(line), 1, kind="preference")
    assert parsed.format == "preference_messages"
    assert [t.role for t in parsed.prompt] == ["system", "user", "model", "user"]


def test_every_bad_preference_line_is_reported_with_its_number(tmp_path):
    lines = [
        PAIR,  # 1 fine
        "{not json",  # 2
        {"input_text": "Q", "candidate_0": "a"},  # 3 candidate_1 and choice missing
        {**PAIR, "choice": 2},  # 4
        {**PAIR, "choice": "0"},  # 5
        {**PAIR, "candidate_1": " Lima. "},  # 6 the same answer twice
        {
            "messages": [user("Q"), {"role": "model", "content": "A"}],
            **{k: PAIR[k] for k in ("candidate_0", "candidate_1", "choice")},
        },  # 7
        {
            "messages": [{"role": "bot", "content": "Q"}],
            "candidate_0": "a",
            "candidate_1": "b",
            "choice": 1,
        },  # 8
        "",  # 9 blank: skipped, still counted
        {"output_text": "x"},  # 10
        {**PAIR, "candidate_0": ""},  # 11
    ]
    report = validate_preference_file(write(tmp_path, lines), None)
    found = {(e.line, e.code, e.field) for e in report.errors}
    assert found == {
        (2, "invalid_json", None),
        (3, "missing_field", "candidate_1"),
        (3, "missing_field", "choice"),
        (4, "invalid_choice", "choice"),
        (5, "wrong_type", "choice"),
        (6, "identical_candidates", "candidate_1"),
        (7, "turn_order", "messages[1].role"),
        (8, "unknown_role", "messages[0].role"),
        (10, "unknown_format", None),
        (11, "empty_field", "candidate_0"),
    }
    assert report.error_count == 10 and report.examples == 1
    assert report.sha256 == hashlib.sha256((tmp_path / "data.jsonl").read_bytes()).hexdigest()


def openai_pair(prompt, preferred, rejected):
    """A line of OpenAI's DPO format."""
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def test_openai_dpo_format_is_read_as_a_pair():
    line = openai_pair(
        [{"role": "system", "content": "Be brief."}, user("Capital of Peru?")],
        "Lima.",
        "It is Lima, a city.",
    )
    parsed = parse_line(json.dumps(line), 4, kind="preference")
    assert parsed.format == "preference_openai"
    assert [t.role for t in parsed.prompt] == ["system", "user"]
    assert (parsed.chosen, parsed.rejected, parsed.line) == ("Lima.", "It is Lima, a city.", 4)


def test_every_bad_openai_dpo_line_is_reported_with_its_field(tmp_path):
    good = openai_pair([user("Q")], "A.", "A, well.")
    lines = [
        good,  # 1 fine
        {**good, "input": {"messages": [{"role": "assistant", "content": "Q"}]}},  # 2
        {**good, "preferred_output": [{"role": "user", "content": "A."}]},  # 3
        {**good, "non_preferred_output": []},  # 4
        {**good, "non_preferred_output": good["preferred_output"] * 2},  # 5
        {**good, "non_preferred_output": [{"role": "assistant", "content": " A. "}]},  # 6
        {"preferred_output": good["preferred_output"], "non_preferred_output": []},  # 7
        {**good, "input": ["Q"]},  # 8
    ]
    report = validate_preference_file(write(tmp_path, lines), None)
    found = {(e.line, e.code, e.field) for e in report.errors}
    assert found == {
        (2, "turn_order", "input.messages[0].role"),
        (3, "unknown_role", "preferred_output[0].role"),
        (4, "empty_field", "non_preferred_output"),
        (5, "wrong_length", "non_preferred_output"),
        (6, "identical_candidates", "non_preferred_output"),
        (7, "missing_field", "input"),
        (7, "empty_field", "non_preferred_output"),
        (8, "wrong_type", "input"),
    }
    assert report.examples == 1


def test_every_bad_prompt_line_is_reported(tmp_path):
    lines = [
        {"input_text": "What is 2 plus 2?"},
        {"messages": [user("Hi")]},
        {"input_text": "Q", "output_text": "ignored"},  # supervised lines serve as prompts
        {"messages": [user("Q"), {"role": "assistant", "content": "A"}]},  # 4: ends with model
        {"messages": [{"role": "system", "content": "S"}]},  # 5: nothing to answer
        {"input_text": 3},  # 6
        [1, 2],  # 7
    ]
    report = validate_prompt_file(write(tmp_path, lines), None)
    assert {(e.line, e.code) for e in report.errors} == {
        (4, "turn_order"),
        (5, "no_user_turn"),
        (6, "wrong_type"),
        (7, "not_an_object"),
    }
    assert report.examples == 3 and report.formats == {"prompt_text": 2, "prompt_messages": 1}


def parts(*texts):
    return [{"text": t} for t in texts]


def test_gemini_contents_serve_as_prompts(tmp_path, tokenizer):
    """Gemini's ``contents`` with a ``systemInstruction`` (RFT's and RLHF's prompts): rendered
    exactly as the same conversation in ``messages`` form, other fields ignored; bad lines say
    what and where."""
    contents = {
        "systemInstruction": {"parts": parts("Be brief.")},
        "contents": [
            {"role": "user", "parts": parts("Hi")},
            {"role": "model", "parts": parts("Hello!")},
            {"role": "user", "parts": parts("Capital of ", "Peru?")},
        ],
        "answer": "Lima",  # a grader's field
    }
    messages = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            {"role": "model", "content": "Hello!"},
            user("Capital of Peru?"),
        ]
    }
    asked = {"role": "user", "parts": parts("Q")}
    bad = [
        {"contents": [asked, {"role": "model", "parts": parts("A")}]},  # 3: ends with model
        {"contents": [{"role": "system", "parts": parts("S")}, asked]},  # 4
        {"systemInstruction": {"parts": parts("S")}},  # 5: nothing to answer
        {"contents": [asked], "messages": [user("Q")]},  # 6: two formats
        {"contents": [{"role": "user", "parts": [{"inline_data": {}}]}]},  # 7: no text
    ]
    report = validate_prompt_file(write(tmp_path, [contents, messages, *bad]), tokenizer)
    assert {(e.line, e.code, e.field) for e in report.errors} == {
        (3, "turn_order", "contents[1].role"),
        (4, "unknown_role", "contents[0].role"),
        (5, "missing_field", "contents"),
        (6, "unknown_format", None),
        (7, "missing_field", "contents[0].parts[0].text"),
    }
    assert "systemInstruction" in next(e.message for e in report.errors if e.line == 4)
    assert report.formats == {"prompt_contents": 1, "prompt_messages": 1}

    (a, b), _ = load_prompts(write(tmp_path, [contents, messages], "ok.jsonl"), tokenizer)
    chat = [{**m, "role": "assistant"} if m["role"] == "model" else m for m in messages["messages"]]
    expected = prompt_ids(tokenizer, chat)
    assert a.input_ids.tolist() == b.input_ids.tolist() == expected
    assert a.text == "Capital of Peru?"


def test_empty_files_cannot_be_trained_on(tmp_path, tokenizer):
    path = write(tmp_path, [])
    with pytest.raises(DatasetValidationError, match="no usable pairs"):
        load_preference(path, tokenizer)
    with pytest.raises(DatasetValidationError, match="no usable prompts"):
        load_prompts(path, tokenizer)


def test_load_raises_with_every_error_listed(tmp_path, tokenizer):
    path = write(tmp_path, [PAIR, {**PAIR, "choice": 5}, "oops"])
    with pytest.raises(DatasetValidationError) as caught:
        load_preference(path, tokenizer)
    message = str(caught.value)
    assert "2 errors" in message and ":2: choice: must be 0 or 1" in message and ":3: " in message


def test_pairs_are_tokenized_as_generation_sees_them(tmp_path, tokenizer):
    pairs, report = load_preference(write(tmp_path, [{**PAIR, "choice": 1}]), tokenizer)
    (pair,) = pairs
    messages = [{"role": "user", "content": "Capital of Peru?"}]
    assert pair.prompt_ids.tolist() == prompt_ids(tokenizer, messages)
    assert tokenizer.decode(pair.chosen_ids) == "It is Lima, a city.<|im_end|>"
    assert tokenizer.decode(pair.rejected_ids) == "Lima.<|im_end|>"
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    assert not (pair.prompt_cut or pair.chosen_cut or pair.rejected_cut)
    # prompt + answer is exactly the chat template's rendering of the conversation
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Lima."}], tokenize=False
    )
    assert tokenizer.decode(np.concatenate([pair.prompt_ids, pair.rejected_ids])) == full.rstrip()
    assert report.ok and report.examples == 1
    assert report.trained_tokens == len(pair.chosen_ids) + len(pair.rejected_ids)


def test_truncation_keeps_the_prompt_end_and_the_answer_start(tokenizer):
    example = PreferenceExample(
        prompt=(parse_line(json.dumps({"input_text": "word " * 50}), 1, "prompt").prompt[0],),
        chosen="short",
        rejected="a much longer answer with many words in it",
        line=1,
        format="preference_text",
    )
    pair = encode_pair(tokenizer, example, prompt_sequence_length=20, target_sequence_length=4)
    full_prompt = prompt_ids(tokenizer, [{"role": "user", "content": "word " * 50}])
    assert pair.prompt_ids.tolist() == full_prompt[-20:]  # the generation header survives
    assert tokenizer.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    assert len(pair.rejected_ids) == 4 and pair.rejected_cut and pair.prompt_cut
    assert not pair.chosen_cut  # "short<|im_end|>" fits


def test_identical_after_truncation_is_dropped_with_a_warning(tmp_path, tokenizer):
    lines = [
        {
            **PAIR,
            "candidate_0": "Same start then one way",
            "candidate_1": "Same start then another",
        },
        PAIR,
    ]
    pairs, report = load_preference(write(tmp_path, lines), tokenizer, target_sequence_length=2)
    assert len(pairs) == 1 and pairs[0].line == 2
    assert report.dropped == {"candidates identical within target_sequence_length=2": 1}
    assert any("dropped" in w for w in report.warnings)
    assert any("truncated" in w for w in report.warnings)


def test_instruction_is_prepended_to_the_first_user_turn(tmp_path, tokenizer):
    path = write(tmp_path, [{"input_text": "What is 2 plus 2?"}])
    (prompt,), _ = load_prompts(path, tokenizer, instruction="Answer briefly.")
    expected = prompt_ids(tokenizer, [user("Answer briefly.\n\nWhat is 2 plus 2?")])
    assert prompt.input_ids.tolist() == expected
    (pair,), _ = load_preference(
        write(tmp_path, [PAIR], "p.jsonl"), tokenizer, instruction="Answer briefly."
    )
    assert pair.prompt_ids.tolist() == prompt_ids(
        tokenizer, [user("Answer briefly.\n\nCapital of Peru?")]
    )


def test_collated_pairs_mask_the_answers_and_close_cut_ones(tokenizer, tmp_path):
    lines = [PAIR, {**PAIR, "candidate_1": "A very long answer that goes on and on and on."}]
    pairs, _ = load_preference(write(tmp_path, lines), tokenizer, target_sequence_length=5)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4  # chosen, chosen, rejected, rejected
    for row, (pair, answer) in enumerate(
        [(p, p.chosen_ids) for p in pairs] + [(p, p.rejected_ids) for p in pairs]
    ):
        n = len(pair.prompt_ids) + len(answer)
        assert batch.lengths[row] == n
        assert batch.response_mask[row].nonzero().flatten().tolist() == list(
            range(len(pair.prompt_ids), n)
        )
    # for a reward model, an answer cut by the length limit gets the end-of-turn token
    closed = collate_pairs(pairs, tokenizer.pad_token_id, end_id=tokenizer.eos_token_id)
    cut_row = 3  # the second pair's rejected answer was cut at 5 tokens
    assert pairs[1].rejected_cut and closed.lengths[cut_row] == batch.lengths[cut_row] + 1
    assert closed.input_ids[cut_row, closed.lengths[cut_row] - 1] == tokenizer.eos_token_id
    assert torch.equal(closed.lengths[:2], batch.lengths[:2])  # whole answers unchanged
