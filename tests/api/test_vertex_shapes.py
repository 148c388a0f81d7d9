"""Vertex AI's shapes, through Google's own ``vertexai`` SDK (google-cloud-aiplatform, REST
transport, ``api_endpoint`` set to a real server on loopback, the key sent as
``x-goog-api-key``): Gemini's generateContent and its stream on an endpoint and on a publisher
model path, ``aiplatform.Endpoint`` (GET of the endpoint, then :predict with a chat instance's
context and examples) and ``aiplatform.Model``. Then the raw REST shapes: Google's error shape,
a prompt longer than the context refused with 400 before any stream opens, SSE streams, and the
fields this server does not implement refused by name."""

import json

import httpx
import pytest

PLACE = "projects/proj/locations/us-central1"
LONG = "hello " * 9000  # over the tiny model's 8192 positions


@pytest.fixture(autouse=True)
def tunelab_home(module_home):
    """Overrides the suite's per-test home: this module's tests share one server (conftest's
    module_home), which reads this one."""
    return module_home / "tunelab-home"


@pytest.fixture
def tuned_server(module_tuned_server):
    """These tests only read the served model: one server for the module, trained once."""
    return module_tuned_server


def _openai(server, key, messages, **kw):
    """The same request through the OpenAI route: the Vertex answers must match it."""
    body = {"model": "shape-model", "messages": messages, "temperature": 0, **kw}
    response = httpx.post(
        server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_vertexai_sdk_calls_a_tuned_model(tuned_server):
    import vertexai
    from google.auth import api_key
    from google.cloud import aiplatform
    from vertexai.generative_models import (
        Content,
        FinishReason,
        GenerationConfig,
        GenerativeModel,
        Part,
    )

    server, key, endpoint, _ = tuned_server
    vertexai.init(
        project="proj",
        location="us-central1",
        api_endpoint=server.url,
        api_transport="rest",
        credentials=api_key.Credentials(key),  # sent as x-goog-api-key
    )
    config = GenerationConfig(temperature=0, max_output_tokens=3, top_p=0.9, stop_sequences=["@@"])
    tuned = GenerativeModel(f"{PLACE}/endpoints/{endpoint}", system_instruction="Be brief.")
    response = tuned.generate_content("item 1: the", generation_config=config)
    same = _openai(
        server,
        key,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "item 1: the"}],
        max_tokens=3,
        stop=["@@"],
    )
    candidate = response.candidates[0]
    assert candidate.text == same["choices"][0]["message"]["content"]
    assert candidate.finish_reason == FinishReason.MAX_TOKENS
    assert response.usage_metadata.candidates_token_count == 3
    assert response.usage_metadata.prompt_token_count == same["usage"]["prompt_tokens"]

    chunks = list(tuned.generate_content("item 1: the", generation_config=config, stream=True))
    assert "".join(c.candidates[0].content.parts[0].text for c in chunks) == candidate.text
    assert chunks[-1].candidates[0].finish_reason == FinishReason.MAX_TOKENS
    assert chunks[-1].usage_metadata.total_token_count == (
        response.usage_metadata.total_token_count
    )

    by_name = GenerativeModel("shape-model", system_instruction="Be brief.")  # publisher path
    assert by_name.generate_content("item 1: the", generation_config=config).text == (
        candidate.text
    )
    turns = [
        Content(role="user", parts=[Part.from_text("item 1: the")]),
        Content(role="model", parts=[Part.from_text("green")]),
        Content(role="user", parts=[Part.from_text("item 2: the")]),
    ]
    multi = by_name.generate_content(turns, generation_config=config)
    expected = _openai(
        server,
        key,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "item 1: the"},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "item 2: the"},
        ],
        max_tokens=3,
    )
    assert multi.usage_metadata.prompt_token_count == expected["usage"]["prompt_tokens"]
    assert multi.text == expected["choices"][0]["message"]["content"]

    deployed = aiplatform.Endpoint(f"{PLACE}/endpoints/{endpoint}")  # GETs the endpoint
    assert deployed.display_name == "shape-model"
    prediction = deployed.predict(
        instances=[
            {
                "context": "Answer with a colour.",
                "examples": [{"input": {"content": "item 0: the"}, "output": {"content": "red"}}],
                "messages": [{"author": "user", "content": "item 1: the"}],
            }
        ],
        parameters={"temperature": 0, "maxOutputTokens": 3},  # sent as doubles: 3.0
    )
    chat = _openai(
        server,
        key,
        [
            {"role": "system", "content": "Answer with a colour."},
            {"role": "user", "content": "item 0: the"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "item 1: the"},
        ],
        max_tokens=3,
    )
    answer = prediction.predictions[0]["candidates"][0]
    assert answer == {"author": "model", "content": chat["choices"][0]["message"]["content"]}
    tokens = prediction.metadata["tokenMetadata"]["inputTokenCount"]["totalTokens"]
    assert tokens == chat["usage"]["prompt_tokens"]  # context and examples were rendered
    assert prediction.deployed_model_id == deployed.gca_resource.deployed_models[0].id

    model = aiplatform.Model(f"{PLACE}/models/shape-model")  # GETs the model
    assert model.display_name == "shape-model" and model.version_id == "1"


def test_vertex_errors_streams_and_refused_fields(tuned_server):
    server, key, endpoint, _ = tuned_server
    http = httpx.Client(base_url=server.url + "/v1", headers={"x-goog-api-key": key}, timeout=120)

    def google_error(response, status):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"code", "message", "status"} and error["code"] == status
        return error

    long_chat = {"contents": [{"role": "user", "parts": [{"text": LONG}]}]}
    for path in (
        f"/{PLACE}/endpoints/{endpoint}:generateContent",
        f"/{PLACE}/endpoints/{endpoint}:streamGenerateContent",
        f"/{PLACE}/publishers/google/models/shape-model:streamGenerateContent?alt=sse",
        "/publishers/google/models/shape-model:generateContent",
    ):
        error = google_error(http.post(path, json=long_chat), 400)
        assert error["status"] == "INVALID_ARGUMENT" and "8192" in error["message"]
    for path in (f"/{PLACE}/endpoints/{endpoint}:predict", f"/endpoints/{endpoint}:predict"):
        error = google_error(http.post(path, json={"instances": [{"prompt": LONG}]}), 400)
        assert "8192" in error["message"]

    body = {
        "contents": [{"role": "user", "parts": [{"text": "item 1: the"}]}],
        "generation_config": {"temperature": 0, "max_output_tokens": 2},  # proto names work too
    }
    sse = http.post(f"/endpoints/{endpoint}:streamGenerateContent?alt=sse", json=body)
    events = [json.loads(line[5:]) for line in sse.text.splitlines() if line.startswith("data:")]
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 2
    array = http.post(f"/endpoints/{endpoint}:streamGenerateContent", json=body).json()
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in array] == [
        e["candidates"][0]["content"]["parts"][0]["text"] for e in events
    ]

    refused = [
        ({"tools": [{"functionDeclarations": [{"name": "f"}]}]}, "tools"),
        ({"generationConfig": {"responseSchema": {"type": "OBJECT"}}}, "generationConfig"),
        ({"generationConfig": {"responseMimeType": "application/json"}}, "generationConfig"),
        ({"generationConfig": {"maxOutputTokens": "5"}}, "generationConfig.maxOutputTokens"),
        ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {}}]}]}, "contents[0].parts"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": []}, "contents"),
    ]
    for change, field in refused:
        bad = {**body, "generationConfig": {}, **change}
        bad.pop("generation_config")
        path = f"/{PLACE}/endpoints/{endpoint}:streamGenerateContent"
        error = google_error(http.post(path, json=bad), 400)
        assert field.split(".")[0].split("[")[0] in error["message"], (change, error)

    predict = f"/{PLACE}/endpoints/{endpoint}:predict"
    for bad in (
        {"instances": [{"prompt": "x"}], "parameters": {"maxOutputTokens": "5"}},
        {"instances": [{"prompt": "x"}], "parameters": {"maxOutputTokens": 2.5}},
        {"instances": [{"prompt": "x", "examples": []}], "parameters": {"autoTruncate": "no"}},
        {"instances": [{"prompt": "x", "examples": [{"input": {"content": "a"}}]}]},
        {"instances": [{"messages": [{"author": "robot", "content": "hi"}]}]},
        {"instances": [{}]},
    ):
        google_error(http.post(predict, json=bad), 400)

    assert google_error(http.get(f"/{PLACE}/endpoints/ep-none"), 404)["status"] == "NOT_FOUND"
    google_error(http.get(f"/{PLACE}/models/none"), 404)
    google_error(http.post(f"/{PLACE}/endpoints/ep-none:generateContent", json=body), 404)
    assert http.get(f"/{PLACE}/models/shape-model@1").json()["versionId"] == "1"
    unauthenticated = httpx.post(
        f"{server.url}/v1/{PLACE}/endpoints/{endpoint}:predict",
        headers={"x-goog-api-key": key + "x"},
        json={"instances": [{"prompt": "x"}]},
    )
    assert google_error(unauthenticated, 401)["status"] == "UNAUTHENTICATED"
