"""Every supported format parses into one Example; every kind of mistake is found, all at once."""

import json

import pytest

from tunelab.data.example import Example, Turn
from tunelab.data.formats import FORMATS, Problem, parse_line, parse_record


def parse(record) -> Example | list[Problem]:
    return parse_line(record if isinstance(record, str) else json.dumps(record), line=7)


def problems(record) -> list[tuple[str, str | None]]:
    result = parse(record)
    assert isinstance(result, list), f"expected problems, parsed {result}"
    return [(p.code, p.field) for p in result]


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def parts(role: str, *texts: str) -> dict:
    return {"role": role, "parts": [{"text": t} for t in texts]}


# --- Valid lines, one per format ---------------------------------------------------------------


def test_vertex_text():
    example = parse({"input_text": "2+2?", "output_text": "4"})
    assert example == Example((Turn("user", "2+2?"), Turn("model", "4")), line=7, format="text")


def test_gemini_messages():
    example = parse(
        {"messages": [msg("system", "Be brief."), msg("user", "Hi"), msg("model", "Hello")]}
    )
    assert example.format == "gemini_messages"
    assert example.system == "Be brief."
    assert [t.role for t in example.turns] == ["system", "user", "model"]


def test_openai_chat_assistant_becomes_model():
    record = {
        "messages": [
            msg("user", "Hi"),
            msg("assistant", "Hello"),
            msg("user", "Bye"),
            msg("assistant", "Ciao"),
        ]
    }
    example = parse(record)
    assert example.format == "openai_chat"
    assert [t.role for t in example.turns] == ["user", "model", "user", "model"]
    assert example.turns[-1].content == "Ciao"


@pytest.mark.parametrize("key", ["systemInstruction", "system_instruction"])
def test_gemini_contents_with_system_instruction_and_joined_parts(key):
    record = {
        key: {"role": "system", "parts": [{"text": "Be "}, {"text": "brief."}]},
        "contents": [parts("user", "Hi", " there"), parts("model", "Hello")],
    }
    example = parse(record)
    assert example.format == "gemini_contents"
    assert example.turns == (
        Turn("system", "Be brief."),
        Turn("user", "Hi there"),
        Turn("model", "Hello"),
    )


def test_gemini_contents_without_system_instruction():
    example = parse({"contents": [parts("user", "Hi"), parts("model", "Hello")]})
    assert example.system is None and len(example.turns) == 2


def test_unused_keys_are_ignored():
    assert isinstance(parse({"input_text": "a", "output_text": "b", "id": 3}), Example)


def test_supervised_kind_is_registered():
    assert [f.name for f in FORMATS["supervised"]] == [
        "text",
        "gemini_messages/openai_chat",
        "gemini_contents",
    ]


# --- Problems ----------------------------------------------------------------------------------


def test_invalid_json():
    [problem] = parse('{"input_text" "a"}')
    assert problem.code == "invalid_json" and problem.field is None
    assert "(column 15)" in problem.message


@pytest.mark.parametrize("text", ['{"input_text": "a",', '{"input_text": "a"\n', '{"a": 1  \r\n'])
def test_invalid_json_at_the_end_of_a_line_says_so_not_column_1(text):
    [problem] = parse_line(text, 1)
    assert "at the end of the line" in problem.message and "column" not in problem.message


def test_not_an_object():
    assert problems("[1, 2]") == [("not_an_object", None)]
    assert parse_record("text", line=1)[0].message == "expected a JSON object, got string"


def test_unknown_format_names_found_keys_and_accepted_formats():
    [problem] = parse({"prompt": "a", "completion": "b"})
    assert problem.code == "unknown_format"
    assert "'prompt', 'completion'" in problem.message
    for accepted in ("input_text", "messages", "contents", "openai_chat"):
        assert accepted in problem.message


def test_keys_of_two_formats_are_ambiguous():
    assert problems({"messages": [], "contents": []}) == [("unknown_format", None)]


def test_missing_and_wrong_type_fields_all_reported():
    assert problems({"input_text": 3}) == [
        ("wrong_type", "input_text"),
        ("missing_field", "output_text"),
    ]
    [problem] = parse({"input_text": "a", "output_text": None})
    assert problem.message == "expected a string, got null"


@pytest.mark.parametrize(
    "record, field",
    [
        ({"input_text": "  ", "output_text": "b"}, "input_text"),
        ({"messages": []}, "messages"),
        ({"messages": [msg("user", "a"), msg("model", "\n")]}, "messages[1].content"),
        ({"contents": [parts("user", "a"), {"role": "model", "parts": []}]}, "contents[1].parts"),
        ({"contents": [parts("user", "a"), parts("model", " ", "")]}, "contents[1].parts"),
    ],
)
def test_empty_field(record, field):
    assert problems(record) == [("empty_field", field)]


def test_wrong_types_deep_in_the_structure():
    record = {
        "systemInstruction": "Be brief.",
        "contents": [
            {"role": "user", "parts": [{"text": 5}]},
            "model: hi",
            {"role": "model", "parts": {}},
        ],
    }
    assert problems(record) == [
        ("wrong_type", "systemInstruction"),
        ("wrong_type", "contents[0].parts[0].text"),
        ("wrong_type", "contents[1]"),
        ("wrong_type", "contents[2].parts"),
    ]
    assert parse(record)[0].message == "expected an object, got string"


def test_non_text_part_is_a_missing_text():
    record = {"contents": [{"role": "user", "parts": [{"inlineData": {}}]}, parts("model", "a")]}
    [problem] = parse(record)
    assert (problem.code, problem.field) == ("missing_field", "contents[0].parts[0].text")
    assert "inlineData" in problem.message


def test_unknown_role_lists_allowed_roles():
    [problem] = parse({"messages": [msg("user", "a"), msg("model", "b"), msg("bot", "c")]})
    assert (problem.code, problem.field) == ("unknown_role", "messages[2].role")
    assert problem.message == "unknown role 'bot' (expected system, user, model)"
    [problem] = parse({"messages": [msg("human", "a"), msg("assistant", "b")]})
    assert problem.message == "unknown role 'human' (expected system, user, assistant)"


def test_system_role_inside_contents_points_to_system_instruction():
    [problem] = parse({"contents": [parts("system", "s"), parts("user", "a"), parts("model", "b")]})
    assert (problem.code, problem.field) == ("unknown_role", "contents[0].role")
    assert "systemInstruction" in problem.message


@pytest.mark.parametrize(
    "roles, expected",
    [
        (["user", "system", "model"], [("turn_order", "messages[1].role")]),
        (["model", "user", "model"], [("turn_order", "messages[0].role")]),
        (["system", "user", "user", "model"], [("turn_order", "messages[2].role")]),
        (["user", "model", "user"], [("turn_order", "messages[2].role")]),
        (["system", "user"], [("no_model_turn", "messages")]),
    ],
)
def test_turn_order(roles, expected):
    assert problems({"messages": [msg(r, "x") for r in roles]}) == expected


def test_turn_order_in_contents():
    record = {
        "contents": [
            parts("user", "a"),
            parts("model", "b"),
            parts("model", "c"),
            parts("user", "d"),
        ]
    }
    assert problems(record) == [
        ("turn_order", "contents[2].role"),
        ("turn_order", "contents[3].role"),
    ]
    [_, last] = parse(record)
    assert "last turn must be a model turn" in last.message


def test_mixed_roles():
    record = {
        "messages": [msg("user", "a"), msg("model", "b"), msg("user", "c"), msg("assistant", "d")]
    }
    assert problems(record) == [("mixed_roles", "messages")]


def test_all_problems_of_a_line_are_reported():
    record = {
        "messages": [msg("user", ""), {"role": "bot"}, msg("model", "ok"), 3, {"content": 1}],
    }
    assert problems(record) == [
        ("empty_field", "messages[0].content"),
        ("unknown_role", "messages[1].role"),
        ("missing_field", "messages[1].content"),
        ("wrong_type", "messages[3]"),
        ("missing_field", "messages[4].role"),
        ("wrong_type", "messages[4].content"),
    ]


def test_both_spellings_of_system_instruction_is_a_duplicate():
    system = {"parts": [{"text": "s"}]}
    record = {
        "systemInstruction": system,
        "system_instruction": system,
        "contents": [parts("user", "a"), parts("model", "b")],
    }
    assert problems(record) == [("duplicate_field", "system_instruction")]
