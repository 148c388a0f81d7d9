"""Serving through the real server on loopback: the official openai client (chat, completions,
streaming, models), Vertex-style :predict, the SDK end to end (train, wait, predict, chat),
concurrent requests for different adapters giving exactly what each gives alone, and a bounded
load test with zero errors."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support import LiveServer, write_jsonl

from tunelab.api.app import create_app
from tunelab.configs import SFTConfig
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.serving.pool import InferencePool

LABELS = ["red", "green", "blue", "yellow"]


def rows(n, seed):
    return [
        {
            "input_text": f"item {i}: the {LABELS[(i + seed) % 4]} one",
            "output_text": LABELS[(i + seed) % 4],
        }
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def tunelab_home(module_home):
    """Overrides the suite's per-test home: the shared server reads this one (conftest's
    module_home)."""
    return module_home / "tunelab-home"


@pytest.fixture(scope="module")
def served(module_home, module_services, tiny_model_dir):
    """A server with three tuned adapters on the tiny base model and a worker thread, shared by
    the module's tests, which train them once (the tests only add models: the SDK test tunes
    ``sdk-model``)."""
    from tunelab.models.bases import add_base

    services, api_key = module_services
    tiny_base = "tiny-llama"
    add_base(tiny_base, str(tiny_model_dir))
    for k in range(3):
        train = write_jsonl(module_home / f"t{k}.jsonl", rows(24, k))
        job, _ = submit_job(
            services.db,
            services.artifacts,
            name=f"tuned-{k}",
            datasets={"train": train},
            config=SFTConfig(
                base_model=tiny_base, train_steps=6, seed=k, learning_rate_multiplier=10
            ),
        )
        assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    pool = InferencePool(services)
    worker = Worker(services.db, services.artifacts)
    thread = threading.Thread(target=worker.run_forever, kwargs={"poll_seconds": 0.2}, daemon=True)
    thread.start()
    with LiveServer(create_app(services, inference=pool)) as server:
        yield server, api_key, tiny_base
    worker.shutdown.set()
    thread.join(30)
    pool.close()


def test_openai_client_chat_completions_streaming_models(served):
    from openai import OpenAI

    server, key, base = served
    client = OpenAI(base_url=server.url + "/v1", api_key=key)
    ids = {m.id for m in client.models.list().data}
    assert {"tuned-0", "tuned-1", "tuned-2"} <= ids

    chat = client.chat.completions.create(
        model="tuned-0",
        messages=[{"role": "user", "content": "item 1: the"}],
        temperature=0,
        max_tokens=8,
    )
    text = chat.choices[0].message.content
    assert isinstance(text, str) and chat.usage.completion_tokens >= 1
    assert chat.choices[0].finish_reason in ("stop", "length")

    streamed = client.chat.completions.create(
        model="tuned-0",
        messages=[{"role": "user", "content": "item 1: the"}],
        temperature=0,
        max_tokens=8,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed]
    assert "".join(pieces) == text  # greedy: streaming gives the same text

    completion = client.completions.create(
        model=base, prompt="item 2: the", temperature=0, max_tokens=6
    )
    assert isinstance(completion.choices[0].text, str)
    stream = client.completions.create(
        model=base, prompt="item 2: the", temperature=0, max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == completion.choices[0].text

    two = client.chat.completions.create(
        model="tuned-1",
        messages=[{"role": "user", "content": "x"}],
        temperature=0.9,
        max_tokens=4,
        n=2,
        seed=1,
    )
    assert len(two.choices) == 2

    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )


def test_vertex_predict_and_sdk_end_to_end(served, tmp_path):
    import tunelab
    from tunelab import sft
    from tunelab.sdk import ChatModel, TextGenerationModel

    server, key, base = served
    tunelab.init(url=server.url, api_key=key)
    train = write_jsonl(tmp_path / "sdk.jsonl", rows(24, 3))
    job = sft.train(
        source_model=base,
        train_dataset=str(train),
        tuned_model_display_name="sdk-model",
        train_steps=4,
        learning_rate_multiplier=10.0,
        adapter_size=4,
    )
    deadline = time.monotonic() + 300
    while not job.has_ended and time.monotonic() < deadline:
        time.sleep(0.2)
        job.refresh()
    assert job.state == "SUCCEEDED", job.error
    assert job.tuned_model_name == "sdk-model@1" and job.tuned_model_endpoint_name.startswith("ep-")

    model = TextGenerationModel.from_pretrained(base).get_tuned_model(job.tuned_model_name)
    response = model.predict("item 5: the", temperature=0, max_output_tokens=6, top_p=0.9, top_k=10)
    again = TextGenerationModel(job.tuned_model_endpoint_name).predict(
        "item 5: the", temperature=0, max_output_tokens=6
    )
    assert response.text == again.text  # by name or by endpoint: the same deployed adapter

    chat = (
        ChatModel.from_pretrained(base).get_tuned_model("sdk-model").start_chat(context="Be brief.")
    )
    first = chat.send_message("item 1: the", temperature=0, max_output_tokens=4)
    chat.send_message("and item 2?", temperature=0, max_output_tokens=4)
    assert len(chat.history) == 4 and chat.history[1]["content"] == first.text
    # A conversation carried over (Vertex's message_history, as the playground's View code
    # writes it) goes on where it was: greedy, the same second answer.
    resumed = (
        ChatModel.from_pretrained(base)
        .get_tuned_model("sdk-model")
        .start_chat(context="Be brief.", message_history=chat.history[:2])
    )
    second = resumed.send_message("and item 2?", temperature=0, max_output_tokens=4)
    assert second.text == chat.history[3]["content"]
    with pytest.raises(ValueError, match=r"message_history\[0\]: expected"):
        ChatModel(base).start_chat(message_history=[{"author": "bot", "content": "hi"}])

    raw = httpx.post(
        f"{server.url}/v1/endpoints/{job.tuned_model_endpoint_name}:predict",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "instances": [
                {"prompt": "item 5: the"},
                {"messages": [{"author": "user", "content": "hi"}]},
            ],
            "parameters": {
                "temperature": 0,
                "maxOutputTokens": 6,
                "candidateCount": 2,
                "stopSequences": ["\n"],
            },
        },
    ).json()
    assert raw["predictions"][0]["content"] == response.text.split("\n")[0]
    assert len(raw["predictions"][1]["candidates"]) == 2
    assert raw["metadata"]["tokenMetadata"]["outputTokenCount"]["totalTokens"] > 0


def test_concurrent_mixed_adapters_match_each_alone(served):
    server, key, base = served
    headers = {"Authorization": f"Bearer {key}"}
    models = ["tuned-0", "tuned-1", "tuned-2", base]
    prompts = [f"item {i}: the" for i in range(4)]

    def ask(model, prompt):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 12,
        }
        return httpx.post(
            f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=120
        ).json()["choices"][0]["message"]["content"]

    alone = {(m, p): ask(m, p) for m in models for p in prompts}
    with ThreadPoolExecutor(16) as pool:
        together = dict(zip(alone, pool.map(lambda mp: ask(*mp), list(alone)), strict=True))
    assert together == alone
    assert len({alone[(m, prompts[0])] for m in models}) > 1  # the adapters do differ


def test_load_32_concurrent_clients_zero_errors(served):
    server, key, _ = served
    headers = {"Authorization": f"Bearer {key}"}
    stop_at = time.monotonic() + 15
    results = {"ok": 0, "errors": []}
    lock = threading.Lock()

    def client(i):
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
            n = 0
            while time.monotonic() < stop_at and n < 20:
                n += 1
                r = c.post(
                    "/v1/chat/completions",
                    json={
                        "model": f"tuned-{i % 3}",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"client {i}"}],
                    },
                )
                with lock:
                    if (
                        r.status_code == 200
                        and r.json()["choices"][0]["message"]["content"] is not None
                    ):
                        results["ok"] += 1
                    else:
                        results["errors"].append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results["errors"] == []
    assert results["ok"] >= 32
