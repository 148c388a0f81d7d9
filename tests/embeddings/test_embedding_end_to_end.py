"""Embedding tuning end to end on a tiny encoder: the CLI submits and runs the job, the model
version lands in the registry with lineage and base-vs-tuned metrics, and the tuned model answers
``/v1/embeddings`` (official openai client), Vertex-style ``:predict`` and the SDK."""

import json
import signal

import httpx
import pytest
from support import LiveServer
from typer.testing import CliRunner

from tunelab.api.app import create_app
from tunelab.cli import app as cli
from tunelab.serving.pool import InferencePool


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def api_key(services):
    from tunelab.auth import create_key

    return create_key(services.db, "tests").secret


def test_cli_job_registry_and_endpoints(services, api_key, tiny_encoder_dir, small_data):
    args = ["tune", "embedding", "--name", "tiny-emb", "--base", str(tiny_encoder_dir)]
    for role, path in small_data.items():
        args += [f"--{role.replace('_', '-')}", str(path)]
    args += ["--train-steps", "4", "--batch-size", "4", "--output-dimensionality", "16"]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # The in-process run puts back the signal handlers it replaced (a SIGTERM handler left
    # behind once made forked children ignore terminate()).
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert "ndcg@10" in result.output and "base" in result.output

    from tunelab.jobs import store
    from tunelab.registry.models import get_version

    version = get_version(services.db, "tiny-emb")
    assert version.method == "embedding" and version.base_model == str(tiny_encoder_dir)
    test = version.evaluation["metrics"]["test"]
    assert set(test) == {"recall@1", "recall@5", "recall@10", "ndcg@10", "mrr@10"}
    assert all(0 <= v["base"] <= 1 and 0 <= v["tuned"] <= 1 for v in test.values())
    assert version.evaluation["queries"]["test"] == 3
    job = store.get_job(services.db, version.source_job_id)
    assert job.state == "SUCCEEDED" and set(job.datasets) >= {"corpus", "queries", "train_labels"}
    folder = services.artifacts.local_path(
        __import__("tunelab.registry.models", fromlist=["x"])
        .adapter_artifact(services.db, version)
        .uri
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["kind"] == "embedding_adapter" and "adapter_model.safetensors" in manifest["files"]
    )
    assert not list(folder.glob("*.bin"))

    again = CliRunner().invoke(cli, args)  # the same command finds the finished job
    assert again.exit_code == 0 and "already tuned" in again.output

    from tunelab.models.bases import add_base

    add_base("tiny-bert", str(tiny_encoder_dir))  # requests name bases, never folders
    pool = InferencePool(services)
    with LiveServer(create_app(services, inference=pool)) as server:
        from openai import OpenAI

        client = OpenAI(base_url=server.url + "/v1", api_key=api_key)
        out = client.embeddings.create(model="tiny-emb", input=["PQS access", "Pelican outage"])
        assert len(out.data) == 2 and len(out.data[0].embedding) == 16  # base64 by default
        floats = client.embeddings.create(
            model="tiny-emb", input="PQS access", encoding_format="float", dimensions=8
        )
        assert len(floats.data[0].embedding) == 8
        assert sum(x * x for x in floats.data[0].embedding) == pytest.approx(1, abs=1e-4)
        assert out.usage.prompt_tokens > 0
        base = client.embeddings.create(model="tiny-bert", input="PQS access")
        assert len(base.data[0].embedding) == 32
        from openai import NotFoundError

        with pytest.raises(NotFoundError):
            client.embeddings.create(model=str(tiny_encoder_dir), input="x")
        with pytest.raises(NotFoundError, match="embedding model"):  # an encoder base too
            client.chat.completions.create(
                model="tiny-bert", messages=[{"role": "user", "content": "x"}]
            )

        with pytest.raises(NotFoundError):
            client.embeddings.create(model="no-such-model", input="x")
        with pytest.raises(NotFoundError, match="embedding model"):  # not loaded as a chat model
            client.chat.completions.create(
                model="tiny-emb", messages=[{"role": "user", "content": "x"}]
            )

        headers = {"Authorization": f"Bearer {api_key}"}
        raw = httpx.post(
            f"{server.url}/v1/endpoints/{job.endpoint}:predict",
            headers=headers,
            json={
                "instances": [
                    {"content": "PQS access", "task_type": "RETRIEVAL_QUERY"},
                    {
                        "content": "request access",
                        "task_type": "RETRIEVAL_DOCUMENT",
                        "title": "Pelican access",
                    },
                ]
            },
        ).json()
        first = raw["predictions"][0]["embeddings"]
        assert len(first["values"]) == 16 and first["statistics"]["token_count"] > 0
        assert first["statistics"]["truncated"] is False
        assert first["values"] == pytest.approx(out.data[0].embedding, abs=1e-5)
        bad = httpx.post(
            f"{server.url}/v1/endpoints/tiny-emb:predict",
            headers=headers,
            json={"instances": [{"content": "x", "task_type": "NOPE"}]},
        )
        assert bad.status_code == 400 and "task_type" in bad.json()["error"]["message"]

        import tunelab
        from tunelab.sdk.models import TextEmbeddingModel

        tunelab.init(url=server.url, api_key=api_key)
        vectors = TextEmbeddingModel.from_pretrained("tiny-emb").get_embeddings(["PQS access"])
        assert vectors[0] == pytest.approx(first["values"], abs=1e-5)

        # Undeployed, it is no longer served: a 404 that says so, on both faces.
        undone = httpx.post(
            f"{server.url}/v1/endpoints/{job.endpoint}:undeploy", headers=headers, json={}
        )
        assert undone.status_code == 200
        with pytest.raises(NotFoundError, match="not deployed"):
            client.embeddings.create(model="tiny-emb", input="PQS access")
        gone = httpx.post(
            f"{server.url}/v1/endpoints/tiny-emb:predict",
            headers=headers,
            json={"instances": [{"content": "x"}]},
        )
        assert gone.status_code == 404 and "not deployed" in gone.json()["error"]["message"]
    pool.close()
