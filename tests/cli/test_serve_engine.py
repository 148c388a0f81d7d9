"""``tunelab serve --engine``: the options that choose vLLM are checked before anything starts."""

import pytest
from typer.testing import CliRunner


@pytest.fixture
def fake_uvicorn(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


def serve(*args: str):
    from tunelab.cli import app

    return CliRunner().invoke(app, ["serve", "--no-worker", *args])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--engine", "tgi", "--preload", ""], "builtin or vllm"),
        (["--engine", "vllm", "--preload", ""], "serves one base model"),
        (["--vllm-url", "http://127.0.0.1:9"], "needs --engine vllm"),
        (["--engine", "vllm", "--max-lora-rank", "12"], "one of 1, 8, 16, 32"),
    ],
)
def test_bad_engine_options_are_refused_naming_the_option(fake_uvicorn, args, says):
    result = serve(*args)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
    assert fake_uvicorn == []


def test_a_missing_vllm_environment_says_how_to_make_it(fake_uvicorn, tmp_path):
    from tunelab.config import DEFAULT_BASE_MODEL

    result = serve(
        "--engine", "vllm", "--preload", DEFAULT_BASE_MODEL,
        "--vllm-python", str(tmp_path / "no-env" / "python"),
    )  # fmt: skip
    assert result.exit_code != 0
    assert "bash scripts/vllm_cpu_env.sh" in str(result.exception)
    assert fake_uvicorn == []


def test_a_vllm_url_that_does_not_answer_is_an_error_at_start(fake_uvicorn):
    from support import free_port

    from tunelab.config import DEFAULT_BASE_MODEL

    url = f"http://127.0.0.1:{free_port()}"
    result = serve("--engine", "vllm", "--preload", DEFAULT_BASE_MODEL, "--vllm-url", url)
    assert result.exit_code != 0
    assert "cannot be reached" in str(result.exception)
    assert fake_uvicorn == []
