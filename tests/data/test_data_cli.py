"""``tunelab data validate``: exit codes, every error in the output, JSON report."""

import json

from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def good_lines(n):
    return [{"input_text": f"What is {i} + {i}?", "output_text": f"{i + i}"} for i in range(n)]


def test_good_file_exits_0_with_statistics(tmp_path, tokenizer):
    path = write(tmp_path / "good.jsonl", good_lines(20))
    result = runner.invoke(app, ["data", "validate", str(path), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    for label in ("examples", "billable tokens", "tokens per example", "dropped"):
        assert label in result.output
    assert "100 to 500 are recommended" in result.output
    assert "OK: 20 examples ready to train" in result.output


def test_bad_file_exits_1_and_reports_every_bad_line(tmp_path, tokenizer):
    lines = good_lines(3) + [
        "{oops",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
        {"input_text": "no answer"},
    ]
    path = write(tmp_path / "bad.jsonl", lines)
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:4: invalid JSON" in result.output
    assert (
        f"{path}:5: messages[1].role: unknown role 'bot' (expected system, user, model)"
        in result.output
    )
    assert f"{path}:6: output_text: missing required field" in result.output
    assert "3 errors" in result.output


def test_json_output(tmp_path, tokenizer):
    path = write(tmp_path / "bad.jsonl", good_lines(2) + ["[]"])
    result = runner.invoke(app, ["data", "validate", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["errors"] == [
        {
            "line": 3,
            "code": "not_an_object",
            "field": None,
            "message": "expected a JSON object, got array",
        }
    ]
    assert report["examples"] == 2 and report["billable_tokens"] == report["total_tokens"]
