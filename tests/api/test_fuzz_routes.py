"""No route answers 5xx to any client input. Every route with a JSON body (from the app's
OpenAPI description, so a route added later is fuzzed too) gets its valid body mutated field by
field: wrong types, huge and negative numbers, empty and oversized strings, nulls, wrong
nesting, missing and unknown fields, not-an-object bodies; then hypothesis draws random JSON
into random fields. Against a real server with a tuned model, so bodies that stay valid reach
the engine."""

import json
import re

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.api.app import create_app

CHAT = [{"role": "user", "content": "hi"}]
GEMINI = {
    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "generationConfig": {"temperature": 0.5, "maxOutputTokens": 2, "stopSequences": ["x"]},
}
PREDICT = {
    "instances": [
        {"prompt": "hi"},
        {
            "context": "Be brief.",
            "examples": [{"input": {"content": "a"}, "output": {"content": "b"}}],
            "messages": [{"author": "user", "content": "hi"}],
        },
    ],
    "parameters": {"temperature": 0.2, "maxOutputTokens": 2, "topK": 5, "candidateCount": 1},
}
# Valid bodies, by the path's last segment (or the whole path).
VALID = {
    "/v1/chat/completions": {
        "model": "shape-model",
        "messages": CHAT,
        "max_tokens": 2,
        "temperature": 0.5,
        "stop": ["\n"],
        "stream": False,
    },
    "/v1/completions": {"model": "shape-model", "prompt": "hi", "max_tokens": 2, "n": 1},
    "/v1/embeddings": {"model": "shape-model", "input": ["hi"], "encoding_format": "float"},
    ":predict": PREDICT,
    ":generateContent": GEMINI,
    ":streamGenerateContent": GEMINI,
    "/v1/tuningJobs": {
        "tuned_model_display_name": "fuzz",
        "train_dataset": "ds-none",
        "config": {"train_steps": 1},
    },
    "/v1/endpoints": {"model": "shape-model"},
    ":undeploy": {"model_version_id": "mv-none"},
}
PATH_VALUES = {"project": "p", "location": "l", "publisher": "google", "model": "shape-model"}
BAD = [
    None,
    True,
    -1,
    0,
    -(10**30),
    10**30,
    1e308,
    -0.5,
    "",
    "x" * 300_000,
    "\x00\ud7ff😀",
    [],
    [None],
    {},
    {"a": {"b": [1, {"c": None}]}},
    [[[[]]]],
]


def json_operations(app):
    for path, operations in app.openapi()["paths"].items():
        for method, op in operations.items():
            content = (op.get("requestBody") or {}).get("content", {})
            if "application/json" in content:
                yield method.upper(), path, content["application/json"]["schema"], app.openapi()


def valid_body(path, schema, spec):
    for key, body in VALID.items():
        if path == key or (key.startswith(":") and path.endswith(key)):
            return json.loads(json.dumps(body))
    # A route this table does not know yet: its required fields, with placeholder values.
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    placeholder = {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "array": []}
    return {
        name: placeholder.get(schema["properties"][name].get("type"), {})
        for name in schema.get("required", [])
    }


def mutations(body):
    """(description, body) for every field of ``body`` set to every bad value, removed, and
    given an unknown sibling; and whole bodies that are not objects."""
    yield "whole body", []
    yield "whole body", "x"
    yield "whole body", None
    yield "whole body", {}

    def walk(node, trail):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            yield trail + [key]
            if isinstance(value, dict | list) and value:
                yield from walk(value, trail + [key])

    for trail in walk(body, []):
        for bad in BAD:
            yield f"{trail} = {str(bad)[:40]}", _set(body, trail, bad)
        if isinstance(trail[-1], str):
            yield f"{trail} removed", _set(body, trail, _REMOVE)
    yield "unknown field", {**body, "unknown_field": 1}


_REMOVE = object()


def _set(body, trail, value):
    copy = json.loads(json.dumps(body))
    node = copy
    for key in trail[:-1]:
        node = node[key]
    if value is _REMOVE:
        del node[trail[-1]]
    else:
        node[trail[-1]] = value
    return copy


def check(http, method, url, body, what):
    response = http.request(method, url, json=body)
    assert response.status_code < 500, (method, url, what, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["error"]["message"], (url, what)
    else:  # a stream that opened must not carry a server error either
        assert "generation failed" not in response.text, (url, what, response.text[:300])
    return response


def test_no_route_answers_5xx_to_any_body(tuned_server):
    server, key, endpoint, pool = tuned_server
    app = create_app(pool.services, inference=pool)  # the served app's routes, for their spec
    operations = list(json_operations(app))
    paths = {path for _, path, _, _ in operations}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} <= paths
    assert sum(p.endswith((":predict", ":generateContent")) for p in paths) >= 5
    values = {**PATH_VALUES, "endpoint": endpoint, "endpoint_id": "ep-none"}
    targets, deep = [], set()
    for method, path, schema, spec in operations:
        url = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)
        targets.append((method, url, valid_body(path, schema, spec)))
        # Routes that differ only in their path prefix share one handler and body: every field
        # mutation goes to the first of them, the others get the valid body, whole-body
        # mutations, broken JSON and hypothesis's draws.
        kind = (json.dumps(schema, sort_keys=True), path.rsplit("}", 1)[-1])
        if kind not in deep:
            deep.add(kind)
            targets[-1] += (True,)
        else:
            targets[-1] += (False,)

    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as http:
        for method, url, body, every_field in targets:
            assert check(http, method, url, body, "valid").status_code < 400 or url in (
                "/v1/tuningJobs",  # the dataset does not exist: 404
                "/v1/fine_tuning/jobs",  # the training file does not exist: 400
                "/v1/tunedModels/x:export",  # no model x, and "x" is no export format
                "/v1/embeddings",  # shape-model is not an embedding model: 404
                "/v1/endpoints/ep-none:undeploy",
                "/v1/tunedModels/x/aliases/x",  # no tuned model x
            ), url
            for what, mutated in mutations(body):
                if every_field or what.startswith("whole"):
                    check(http, method, url, mutated, what)
            not_json = http.request(
                method, url, content=b"{not json", headers={"content-type": "application/json"}
            )
            assert 400 <= not_json.status_code < 500, (url, not_json.text)

        json_values = st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither
            | st.text(max_size=50),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        )

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            derandomize=True,  # the same draws every run: CI is reproducible, never flaky
            suppress_health_check=list(HealthCheck),
        )
        @given(target=st.sampled_from(targets), data=st.data())
        def random_fields(target, data):
            method, url, body, _ = target
            fields = list(body) + ["unknown"]
            changes = data.draw(
                st.dictionaries(st.sampled_from(fields), json_values, min_size=1, max_size=3)
            )
            check(http, method, url, {**body, **changes}, changes)

        random_fields()
