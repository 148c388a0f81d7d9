"""The OpenAI-compatible routes as OpenAI's own clients expect them, through the official
``openai`` client against a real server on loopback: a prompt longer than the context is a 400
in OpenAI's error shape (streamed too, before the stream opens), streams end with the real
finish reason and the usage when asked, ``models.retrieve`` works, types are strict, and fields
the server does not implement are refused naming the field."""

import httpx
import pytest

LONG = "hello " * 9000  # over the tiny model's 8192 positions


def _client(server, key):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_prompt_longer_than_the_context_is_a_400_in_openai_shape(tuned_server):
    import openai

    server, key, _, _ = tuned_server
    client = _client(server, key)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="shape-model",
                messages=[{"role": "user", "content": LONG}],
                max_tokens=4,
                stream=stream,
            )
        error = caught.value
        assert error.status_code == 400 and error.code == "context_length_exceeded"
        assert error.param == "messages" and error.type == "invalid_request_error"
        assert "8192" in error.message
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="shape-model", prompt=LONG, stream=stream)
        assert caught.value.param == "prompt"

    raw = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "shape-model", "messages": [{"role": "user", "content": LONG}]},
    )
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_stream_finish_reason_usage_and_models_retrieve(tuned_server):
    import openai

    server, key, _, _ = tuned_server
    client = _client(server, key)
    ask = {
        "model": "shape-model",
        "messages": [{"role": "user", "content": "item 1: the"}],
        "temperature": 0,
        "max_tokens": 3,
    }
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].finish_reason == "length"  # the tiny model never stops in 3 tokens
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        whole.choices[0].message.content
    )
    last = chunks[-1]  # OpenAI's usage chunk: no choices, the whole call's usage
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(**ask, stream=True))
    assert all(c.usage is None for c in plain)  # without include_usage, no usage chunk

    completion = list(
        client.completions.create(
            model="shape-model",
            prompt="item 2: the",
            temperature=0,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert completion[-2].choices[0].finish_reason == "length"
    assert completion[-1].usage.completion_tokens == 2

    model = client.models.retrieve("shape-model")
    assert model.id == "shape-model" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_a_failure_after_the_stream_opened_is_an_error_event(tuned_server):
    """The status line is sent with the first chunk: a later failure (here the engine shut
    down under the request) ends the stream with OpenAI's error event, which the client
    raises, instead of a dropped connection."""
    import openai

    server, key, _, pool = tuned_server
    client = _client(server, key)
    stream = client.chat.completions.create(
        model="shape-model",
        messages=[{"role": "user", "content": "item 1: the"}],
        max_tokens=2000,
        stream=True,
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    pool.target("shape-model").engine.close(drain=False)
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "engine was closed" in caught.value.message


REFUSED = [
    ("stream", "yes"),
    ("stream", 1),
    ("n", "2"),
    ("max_tokens", "5"),
    ("max_tokens", 4.5),
    ("temperature", "0.5"),
    ("seed", True),
    ("stop", 5),
    ("messages", [{"role": "user", "content": 5}]),
    ("messages", [{"role": "tool", "content": "x", "tool_call_id": "a"}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]),
    ("response_format", {"type": "json_object"}),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("logit_bias", {"50256": -100}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 1),
    ("modalities", ["text", "audio"]),
    ("stream_options", {"include_usage": True}),  # without stream
    ("not_an_openai_field", 1),
    ("model", 5),
]


def test_wrong_types_and_unimplemented_fields_are_refused_naming_the_field(inference_server):
    """Refused before the model is looked up: no model needs to exist."""
    server, key = inference_server
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for field, value in REFUSED:
            body = {"model": "any", "messages": [{"role": "user", "content": "hi"}], field: value}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 400, (field, value, response.text)
            error = response.json()["error"]
            assert error["param"].startswith(field) and field in error["message"], error
            assert error["type"] == "invalid_request_error"
        for field, value in [("echo", True), ("best_of", 3), ("suffix", "x"), ("prompt", [1, 2])]:
            body = {"model": "any", "prompt": "hi", field: value}
            response = http.post("/v1/completions", json=body)
            assert response.status_code == 400 and response.json()["error"]["param"] == field
        embedding = http.post("/v1/embeddings", json={"model": "any", "input": [[1, 2]]})
        assert embedding.status_code == 400 and embedding.json()["error"]["param"] == "input"


def test_no_op_values_of_unimplemented_fields_are_accepted(tuned_server):
    server, key, _, _ = tuned_server
    client = _client(server, key)
    chat = client.chat.completions.create(
        model="shape-model",
        messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}]
        + [{"role": "user", "content": "item 3: the", "name": "ann"}],
        max_completion_tokens=2,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0,
        response_format={"type": "text"},
        tool_choice="none",
        user="ann",
        n=2,
        stream=False,
    )
    assert len(chat.choices) == 2 and chat.usage.completion_tokens == 4
    with pytest.raises(Exception) as caught:
        client.chat.completions.create(
            model="shape-model", messages=[{"role": "user", "content": "x"}], n=2, stream=True
        )
    assert getattr(caught.value, "param", None) == "n"
