"""Each grader type on answers worked out by hand, templates, composition, and config errors
that say what and where."""

import pytest
from pydantic import ValidationError

from tunelab.graders.build import build_grader
from tunelab.graders.spec import describe_errors, parse_grader
from tunelab.graders.text import parse_number


def scores(spec, samples, items=None):
    items = items if items is not None else [{}] * len(samples)
    return build_grader(spec).grade(samples, items).scores.tolist()


def test_string_check_operations_and_case():
    eq = {"type": "string_check", "operation": "eq", "reference": "{{item.label}}"}
    assert scores(eq, ["yes", " yes\n", "Yes"], [{"label": "yes"}] * 3) == [1, 1, 0]
    no_case = eq | {"case_sensitive": False}
    assert scores(no_case, ["YES"], [{"label": "yes"}]) == [1]
    contains = {"type": "string_check", "operation": "contains", "reference": "blue"}
    assert scores(contains, ["the sky is blue.", "green"]) == [1, 0]
    regex = {"type": "string_check", "operation": "regex", "reference": r"^Answer: -?\d+$"}
    assert scores(regex, ["Answer: 12", "Answer: twelve", "So, Answer: 12"]) == [1, 0, 0]
    ne = {"type": "string_check", "operation": "ne", "reference": "x", "strip": False}
    assert scores(ne, ["x", "x "]) == [0, 1]


def test_text_similarity_metrics():
    ref = {"reference": "{{item.ref}}", "type": "text_similarity"}
    item = [{"ref": "the cat sat on the mat"}]
    same = ["the cat sat on the mat"]
    for metric in ("bleu", "rouge_l", "fuzzy_ratio"):
        assert scores(ref | {"metric": metric}, same, item) == [pytest.approx(1.0)]
        assert scores(ref | {"metric": metric}, ["zzz"], item) == [pytest.approx(0.0, abs=0.05)]
    # difflib: 2 * matches / total length = 2 * 3 / (4 + 3)
    assert scores(ref | {"metric": "fuzzy_ratio"}, ["abcd"], [{"ref": "abc"}]) == [
        pytest.approx(6 / 7)
    ]
    # ROUGE-L F: LCS "the cat" (2) of 2 and 6 tokens -> P=1, R=1/3, F=0.5
    assert scores(ref | {"metric": "rouge_l"}, ["the cat"], item) == [pytest.approx(0.5)]


def test_json_schema_parses_validates_and_accepts_a_fence():
    spec = {
        "type": "json_schema",
        "json_schema": {
            "type": "object",
            "required": ["name", "age"],
            "properties": {"age": {"type": "integer"}},
        },
    }
    answers = [
        '{"name": "Ada", "age": 36}',
        '```json\n{"name": "Ada", "age": 36}\n```',
        '{"name": "Ada"}',
        '{"name": "Ada", "age": "old"}',
        "not json",
    ]
    assert scores(spec, answers) == [1, 1, 0, 0, 0]


def test_numeric_tolerances_and_pattern():
    spec = {"type": "numeric", "reference": "{{item.answer}}"}
    item = [{"answer": 42}]
    assert scores(spec, ["It is 42."], item) == [1]
    assert scores(spec, ["I think 41, no: 43"], item) == [0]  # the last number counts
    assert scores(spec, ["no number"], item) == [0]
    assert scores(spec | {"abs_tolerance": 1}, ["43"], item) == [1]
    assert scores(spec | {"rel_tolerance": 0.1}, ["45"], item) == [1]
    assert scores(spec | {"rel_tolerance": 0.01}, ["45"], item) == [0]
    first = spec | {"pattern": r"Answer: (\S+)"}
    assert scores(first, ["Answer: 42, not 7"], item) == [1]
    assert parse_number("total 1,234.5 units") == 1234.5
    assert parse_number("-3e2") == -300


def test_combinations():
    regex = {"type": "string_check", "operation": "regex", "reference": r"^Answer: \d+$"}
    num = {"type": "numeric", "reference": "{{item.answer}}"}
    samples = ["Answer: 42", "Answer: 41", "42", "nothing"]
    items = [{"answer": 42}] * 4
    weighted = {"type": "weighted_sum", "graders": [regex, num], "weights": [1, 3]}
    assert scores(weighted, samples, items) == [1, 0.25, 0.75, 0]
    assert scores({"type": "all", "graders": [regex, num]}, samples, items) == [1, 0, 0, 0]
    assert scores({"type": "any", "graders": [regex, num]}, samples, items) == [1, 1, 1, 0]
    grades = build_grader(weighted).grade(samples, items)
    assert grades.parts["string_check"].tolist() == [1, 1, 0, 0]
    assert grades.parts["numeric"].tolist() == [1, 0, 1, 0]


def test_a_line_without_the_field_scores_zero_and_is_counted():
    grades = build_grader({"type": "numeric", "reference": "{{item.answer}}"}).grade(
        ["1", "2"], [{"answer": 1}, {"other": 2}]
    )
    assert grades.scores.tolist() == [1, 0]
    assert grades.failures == {"missing_field": 1}


def test_fields_lists_what_the_dataset_must_have():
    spec = parse_grader(
        {
            "type": "all",
            "graders": [
                {"type": "numeric", "reference": "{{item.answer}}"},
                {
                    "type": "string_check",
                    "operation": "eq",
                    "input": "{{item.meta.kind}}",
                    "reference": "x",
                },
            ],
        }
    )
    assert spec.fields() == ["answer", "meta.kind"]


@pytest.mark.parametrize(
    ("spec", "where", "says"),
    [
        ({"type": "nope"}, "grader", "'string_check'"),
        ({"type": "string_check", "operation": "eq"}, "grader.reference", "Field required"),
        (
            {"type": "string_check", "operation": "regex", "reference": "("},
            "grader",
            "not a valid regular expression",
        ),
        ({"type": "numeric", "reference": "{{answer}}"}, "grader.reference", "{{item.FIELD}}"),
        ({"type": "numeric", "reference": "{{item.a}"}, "grader.reference", "unbalanced"),
        ({"type": "numeric", "reference": "1", "pattern": r"\d+"}, "grader.pattern", "one"),
        ({"type": "json_schema", "json_schema": {"type": 5}}, "grader.json_schema", "JSON Schema"),
        ({"type": "python", "source": "../etc/passwd"}, "grader.source", "pattern"),
        ({"type": "python", "source": "x", "timeout_seconds": 600}, "grader.timeout_seconds", "60"),
        ({"type": "weighted_sum", "graders": []}, "grader.graders", "at least 1"),
        (
            {"type": "any", "graders": [{"type": "numeric", "reference": "1"}], "weights": [1]},
            "grader",
            "weighted_sum only",
        ),
        (
            {
                "type": "weighted_sum",
                "graders": [{"type": "numeric", "reference": "1", "tolerance": 1}],
            },
            "grader.graders.0.tolerance",
            "Extra inputs",
        ),
    ],
)
def test_bad_specs_say_what_and_where(spec, where, says):
    with pytest.raises(ValidationError) as info:
        parse_grader(spec)
    lines = describe_errors(info.value)
    assert any(line.startswith(f"{where}:") and says in line for line in lines), lines


def test_python_graders_are_off_unless_the_operator_allows_a_folder(monkeypatch):
    from tunelab.graders.sandbox import GraderUnavailable

    monkeypatch.delenv("TUNELAB_PYTHON_GRADERS", raising=False)
    with pytest.raises(GraderUnavailable, match="TUNELAB_PYTHON_GRADERS"):
        build_grader({"type": "python", "source": "anything"})
