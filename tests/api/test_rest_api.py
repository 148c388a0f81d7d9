"""The REST API against a real server on loopback: every route refuses a request without a
valid key, bad input gets a 4xx with a message (never a 500), oversized bodies get 413, and a
tuning job can be driven end to end."""

import json
import re

import httpx
import pytest
from support import write_jsonl

from tunelab.api.app import create_app


def all_routes(app):
    """Every route the app serves, from its OpenAPI spec (so a new route is covered as added)."""
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path


@pytest.mark.parametrize("inference", [False, True], ids=["rest", "with-inference"])
def test_every_route_but_health_refuses_without_a_valid_key(services, api_key, inference):
    from support import LiveServer, StubPool

    app = create_app(services, inference=StubPool() if inference else None)
    routes = sorted(set(all_routes(app)))
    assert len(routes) > 10
    # One client for every request (httpx.request makes one, with its TLS context, per call);
    # the server sets no cookies, so a request carries only the headers given here.
    with LiveServer(app) as server, httpx.Client() as client:
        for method, path in routes:
            url = server.url + re.sub(r"\{[^}]+\}", "x", path)
            for headers in (
                {},
                {"Authorization": "Bearer tl-nothere.wrong"},
                {"Authorization": api_key + "x"},
            ):
                response = client.request(method, url, headers=headers, json={})
                assert not client.cookies
                if path == "/health":
                    assert response.status_code == 200, path
                    continue
                assert response.status_code == 401, (method, path, response.status_code)
                # OpenAI's and TuneLab's shapes say "unauthenticated"; Google's gives the status.
                assert response.json()["error"]["code"] in ("unauthenticated", 401)


def test_openapi_spec_is_served_only_with_a_key(live, api_key):
    refused = httpx.get(live.url + "/openapi.json")
    assert refused.status_code == 401 and "tuningJobs" not in refused.text
    spec = httpx.get(live.url + "/openapi.json", headers={"x-api-key": api_key}).json()
    assert "/v1/tuningJobs" in spec["paths"] and "/v1/datasets" in spec["paths"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "POST",
            "/v1/tuningJobs",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/v1/tuningJobs", {"json": []}, 422),
        (
            "POST",
            "/v1/tuningJobs",
            {"json": {"tuned_model_display_name": 5, "train_dataset": "ds-x"}},
            422,
        ),
        (
            "POST",
            "/v1/tuningJobs",
            {"json": {"tuned_model_display_name": "x" * 129, "train_dataset": "d"}},
            422,
        ),
        (
            "POST",
            "/v1/tuningJobs",
            {"json": {"tuned_model_display_name": "m", "train_dataset": "ds-missing"}},
            404,
        ),
        (
            "POST",
            "/v1/tuningJobs",
            {
                "json": {
                    "tuned_model_display_name": "m",
                    "train_dataset": "d",
                    "config": {"adapter_size": 3, "epochs": "many"},
                }
            },
            422,
        ),
        (
            "POST",
            "/v1/tuningJobs",
            {"json": {"tuned_model_display_name": "m", "train_dataset": "d", "method": "nope"}},
            422,
        ),
        ("GET", "/v1/tuningJobs/job-nope", {}, 404),
        ("POST", "/v1/tuningJobs/job-nope:cancel", {}, 404),
        ("GET", "/v1/tuningJobs?limit=0", {}, 422),
        ("GET", "/v1/tunedModels/nope", {}, 404),
        ("DELETE", "/v1/tunedModels/nope?version=x", {}, 422),
        ("GET", "/v1/datasets/ds-nope", {}, 404),
        ("POST", "/v1/datasets", {"json": {"file": "x"}}, 422),
        ("POST", "/v1/endpoints", {"json": {"model": ""}}, 422),
        ("POST", "/v1/endpoints/ep-x:undeploy", {"json": {}}, 404),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message(http, method, path, kwargs, status):
    response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]


def test_invalid_config_reports_every_field(http):
    body = {
        "tuned_model_display_name": "m",
        "train_dataset": "d",
        "config": {"adapter_size": 3, "batch_size": 0},
    }
    details = http.post("/v1/tuningJobs", json=body).json()["error"]["details"]
    assert {e["field"] for e in details["errors"]} == {"config.adapter_size", "config.batch_size"}


@pytest.mark.parametrize("method", ["sft", "rlhf", "dpo", "embedding", "rft"])
def test_an_unknown_or_mistyped_config_field_is_a_422_naming_it(http, method):
    """The body's config is the method's config class (the CLI's and the Studio's schema): a
    field it does not have, or a value of the wrong type, is refused naming the field."""
    from tunelab.jobs.methods import METHODS

    schema = METHODS[method].config.model_json_schema()
    integer = next(f for f, p in schema["properties"].items() if p.get("type") == "integer")
    body = {
        "method": method,
        "tuned_model_display_name": "m",
        "train_dataset": "d",
        "config": {"no_such_knob": 1, integer: "many"},
    }
    r = http.post("/v1/tuningJobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_config"
    errors = {e["field"]: e["message"] for e in r.json()["error"]["details"]["errors"]}
    assert "Extra inputs are not permitted" in errors["config.no_such_knob"]
    assert "integer" in errors[f"config.{integer}"]


def test_oversized_bodies_get_413(services, api_key):
    from support import LiveServer

    app = create_app(services, body_limit=1024, upload_limit=4096)
    with (
        LiveServer(app) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}) as c,
    ):
        big = c.post(
            "/v1/tuningJobs", content=b"x" * 5000, headers={"content-type": "application/json"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

        def chunks():  # no Content-Length: cut off while streaming
            for _ in range(10):
                yield b"y" * 1000

        streamed = c.post(
            "/v1/tuningJobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        upload = c.post("/v1/datasets", files={"file": ("a.jsonl", b"z" * 10_000)})
        assert upload.status_code == 413


def test_job_lifecycle_over_rest(http, services, tmp_path, tiny_base):
    from tunelab.jobs.worker import Worker

    rows = [{"input_text": f"q{i}", "output_text": "a"} for i in range(20)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{broken\n")
    good = write_jsonl(tmp_path / "train.jsonl", rows)
    uploaded = http.post("/v1/datasets", files={"file": ("train.jsonl", good.read_bytes())}).json()
    assert uploaded["id"].startswith("ds-") and uploaded["filename"] == "train.jsonl"
    assert (
        http.post("/v1/datasets", files={"file": ("again.jsonl", good.read_bytes())}).json()["id"]
        == uploaded["id"]
    )
    report = http.get(
        f"/v1/datasets/{uploaded['id']}/validation", params={"base_model": tiny_base}
    ).json()
    assert report["examples"] == 20 and report["errors"] == []
    bad_id = http.post("/v1/datasets", files={"file": ("bad.jsonl", bad.read_bytes())}).json()["id"]
    bad_report = http.get(
        f"/v1/datasets/{bad_id}/validation", params={"base_model": tiny_base}
    ).json()
    assert [e["line"] for e in bad_report["errors"]] == [2]

    body = {
        "tuned_model_display_name": "rest-model",
        "train_dataset": uploaded["id"],
        "config": {"base_model": tiny_base, "train_steps": 3},
        "idempotency_key": "abc",
    }
    created = http.post("/v1/tuningJobs", json=body)
    assert created.status_code == 201
    job = created.json()
    assert job["state"] == "QUEUED" and [s["name"] for s in job["pipeline"]][0] == "validate"
    assert http.post("/v1/tuningJobs", json=body).json()["id"] == job["id"]  # idempotent
    assert Worker(services.db, services.artifacts).run_job(job["id"]).state == "SUCCEEDED"

    done = http.get(f"/v1/tuningJobs/{job['id']}").json()
    assert (
        done["state"] == "SUCCEEDED" and done["tuned_model"] == "rest-model@1" and done["endpoint"]
    )
    assert done["usage"]["trained_tokens"] > 0
    assert all(s["state"] in ("SUCCEEDED", "SKIPPED") for s in done["pipeline"])
    assert len(http.get(f"/v1/tuningJobs/{job['id']}/metrics").json()["metrics"]) == 3
    assert http.get(f"/v1/tuningJobs/{job['id']}/events").json()["events"][0]["kind"] == "created"
    conflict = http.post(f"/v1/tuningJobs/{job['id']}:cancel")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "illegal_state"

    model = http.get("/v1/tunedModels/rest-model").json()
    assert model["versions"][0]["source_job"] == job["id"]
    lineage = http.get("/v1/tunedModels/rest-model/lineage").json()
    assert uploaded["id"] in lineage["datasets"]
    endpoints = http.get("/v1/endpoints").json()["endpoints"]
    assert endpoints[0]["deployed_model"] == "rest-model@1"
    assert (
        http.post(f"/v1/endpoints/{endpoints[0]['id']}:undeploy", json={}).json()["undeployed"] == 1
    )
    assert (
        http.post("/v1/endpoints", json={"model": "rest-model"}).json()["deployed_model"]
        == "rest-model@1"
    )
    assert http.delete("/v1/tunedModels/rest-model").json()["deleted_versions"] == [1]
    assert http.get("/v1/tunedModels/rest-model").status_code == 404


def _upload(http, path):
    return http.post("/v1/datasets", files={"file": (path.name, path.read_bytes())}).json()["id"]


def test_validation_reads_preference_pairs_and_prompts(http, tmp_path, tiny_base):
    pair = {"input_text": "2 + 2?", "candidate_0": "4", "candidate_1": "5", "choice": 0}
    good = _upload(http, write_jsonl(tmp_path / "pairs.jsonl", [pair] * 20))
    bad = _upload(
        http,
        write_jsonl(
            tmp_path / "bad-pairs.jsonl",
            [pair, {**pair, "choice": 2}, {"input_text": "x"}, {**pair, "candidate_1": "4"}],
        ),
    )
    prompts = _upload(
        http,
        write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": f"Q {i}?"} for i in range(20)]),
    )
    base = {"base_model": tiny_base}

    def report(dataset_id, **params):
        response = http.get(f"/v1/datasets/{dataset_id}/validation", params=base | params)
        assert response.status_code == 200, response.text
        return response.json()

    ok = report(good, kind="preference", target_sequence_length=8)
    assert ok["ok"] and ok["errors"] == [] and ok["usable_examples"] == 20
    assert ok["formats"] == {"preference_text": 20} and ok["total_tokens"] > 0

    wrong = report(bad, kind="preference")
    assert not wrong["ok"] and wrong["examples"] == 1
    assert [(e["line"], e["field"]) for e in wrong["errors"]] == [
        (2, "choice"),
        (3, "candidate_0"),
        (3, "candidate_1"),
        (3, "choice"),
        (4, "candidate_1"),
    ]
    assert wrong["errors"][0]["code"] == "invalid_choice"
    assert wrong["errors"][-1]["code"] == "identical_candidates"
    # Read as supervised data (the default kind), every line is wrong (0: no usable example).
    assert {e["line"] for e in report(bad)["errors"]} == {0, 1, 2, 3, 4}

    read = report(prompts, kind="prompts", prompt_sequence_length=16)
    assert read["ok"] and read["usable_examples"] == 20 and read["formats"] == {"prompt_text": 20}
    assert read["max_tokens"] > 0
    assert [
        e["line"] for e in report(good, kind="prompts")["errors"]
    ] == []  # input_text is a prompt
    no_prompt = report(bad, kind="prompts", instruction="Answer briefly.")
    assert no_prompt["ok"]  # every line has input_text; candidates are ignored


def test_validation_refuses_an_unknown_kind(http, tmp_path):
    dataset = _upload(http, write_jsonl(tmp_path / "p.jsonl", [{"input_text": "x"}]))
    response = http.get(f"/v1/datasets/{dataset}/validation", params={"kind": "pairs"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"]["field"] == "kind"
    assert "'pairs'" in error["message"] and "supervised, preference, prompts" in error["message"]
