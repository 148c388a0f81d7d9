"""Export through REST (an archive the server made, downloaded by its id) and the CLI."""

import hashlib
import io
import json
import tarfile

import httpx
import pytest
from support import LiveServer
from typer.testing import CliRunner


@pytest.fixture
def http(tuned):
    from tunelab.api.app import create_app
    from tunelab.auth import create_key

    services, _ = tuned
    key = create_key(services.db, "export-tests").secret
    with LiveServer(create_app(services)) as server:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as client:
            yield client


def test_export_then_download_the_archive(http, tuned):
    reply = http.post("/v1/tunedModels/colors:export", json={"format": "peft"})
    assert reply.status_code == 200, reply.text
    made = reply.json()
    assert made["id"].startswith("exp-") and made["download_url"] == f"/v1/exports/{made['id']}"
    assert made["model"] == "colors@1" and made["filename"] == "colors-v1-peft.tar"
    assert "uri" not in made  # the server's storage layout stays private

    download = http.get(made["download_url"])
    assert download.status_code == 200
    assert "colors-v1-peft.tar" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == made["sha256"]
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        names = set(tar.getnames())
        config = json.load(tar.extractfile("colors-v1-peft/adapter_config.json"))
    assert {"colors-v1-peft/adapter_model.safetensors", "colors-v1-peft/tokenizer.json"} <= names
    assert config["peft_type"] == "LORA"

    gguf = http.post(
        "/v1/tunedModels/colors:export",
        json={"format": "gguf", "quantization": "q8_0", "version": 1},
    ).json()
    assert gguf["filename"] == "colors-v1-gguf-q8_0.tar"
    assert set(gguf["files"]) == {"colors-v1-q8_0.gguf", "Modelfile"}


def test_export_errors_and_auth(http, tuned):
    assert http.post("/v1/tunedModels/nope:export", json={"format": "peft"}).status_code == 404
    bad = http.post("/v1/tunedModels/colors:export", json={"format": "onnx"})
    assert bad.status_code == 422
    wrong = http.post(
        "/v1/tunedModels/colors:export", json={"format": "peft", "quantization": "q8_0"}
    )
    assert wrong.status_code == 400 and "gguf formats" in wrong.json()["error"]["message"]
    assert http.get("/v1/exports/exp-0000000000000000").status_code == 404
    assert http.get("/v1/exports/..%2F..%2Fetc").status_code == 404
    anonymous = httpx.post(f"{http.base_url}/v1/tunedModels/colors:export", json={"format": "peft"})
    assert anonymous.status_code == 401
    made = http.post("/v1/tunedModels/colors:export", json={"format": "peft"}).json()
    assert httpx.get(f"{http.base_url}{made['download_url']}").status_code == 401


def test_cli_export(tuned, tmp_path, monkeypatch):
    from tunelab.cli import app

    services, _ = tuned
    monkeypatch.setenv("TUNELAB_DATABASE_URL", services.db.url)
    monkeypatch.setenv("TUNELAB_ARTIFACTS_URL", services.artifacts.url)
    result = CliRunner().invoke(
        app, ["models", "export", "colors@1", "--format", "merged", "--output", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    result = CliRunner().invoke(
        app, ["models", "export", "colors", "--format", "tar", "--output", str(tmp_path / "t")]
    )
    assert result.exit_code == 1 and "format 'tar' is not one of" in result.output
