"""Deploy that means something (issue 19 item 2), as Vertex defines it: an endpoint serves the
versions deployed to it (with a traffic split), undeploying stops serving at once on every
face, a job deploys its new version only as its ``deploy`` setting says, and version aliases
(``default`` and the user's) resolve everywhere as ``name@alias`` and move when asked."""

import random
import time

import httpx
import pytest
from support import write_jsonl
from typer.testing import CliRunner

from tunelab.registry.endpoints import deploy_version, deployments, endpoint_id_for, pick_deployed
from tunelab.registry.models import adapter_artifact, get_version, register_version

PLACE = "projects/p/locations/l"


def _second_version(services, name: str):
    """Register another version of ``name`` over the same adapter files (a real, servable
    bundle) without training again."""
    v1 = get_version(services.db, f"{name}@1")
    artifact = adapter_artifact(services.db, v1)
    return register_version(
        services.db,
        name=name,
        method="sft",
        base_model=v1.base_model,
        adapter_uri=artifact.uri,
        adapter_sha256=artifact.sha256,
        adapter_size=artifact.size_bytes,
        config=v1.config,
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )


def _chat(http, model):
    return http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "item 1: the"}],
            "max_tokens": 2,
        },
    )


def _calls(http, model, endpoint):
    """Every face that serves a model, each called for ``model`` (or its endpoint id)."""
    gemini = {"contents": [{"role": "user", "parts": [{"text": "item 1: the"}]}]}
    predict = {"instances": [{"prompt": "item 1: the"}], "parameters": {"maxOutputTokens": 2}}
    return {
        "chat": _chat(http, model),
        "generateContent": http.post(
            f"/v1/{PLACE}/publishers/google/models/{model}:generateContent", json=gemini
        ),
        "predict by name": http.post(f"/v1/endpoints/{model}:predict", json=predict),
        "predict by endpoint": http.post(f"/v1/endpoints/{endpoint}:predict", json=predict),
        "endpoint generateContent": http.post(
            f"/v1/{PLACE}/endpoints/{endpoint}:generateContent", json=gemini
        ),
    }


def test_undeploy_stops_serving_at_once_on_every_face(tuned_server, services):
    server, key, endpoint, pool = tuned_server
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    version = get_version(services.db, "shape-model@1")
    for face, response in _calls(http, "shape-model@1", endpoint).items():
        assert response.status_code == 200, (face, response.text)

    def listed() -> set[str]:  # what OpenAI clients are offered
        return {m["id"] for m in http.get("/v1/models").json()["data"]}

    assert "shape-model" in listed()
    (engine,) = pool._engines.values()
    assert version.id in engine.adapters  # loaded by the calls above

    undone = http.post(f"/v1/endpoints/{endpoint}:undeploy", json={"model": "shape-model@1"})
    assert undone.status_code == 200 and undone.json()["model_version_ids"] == [version.id]
    for model in ("shape-model@1", "shape-model", "shape-model@default"):
        for face, response in _calls(http, model, endpoint).items():
            assert response.status_code == 404, (model, face, response.text)
            said = response.text
            assert "not deployed" in said or "has no deployed model" in said, (face, said)
    assert "shape-model@1" in _chat(http, "shape-model").json()["error"]["message"]
    assert "shape-model" not in listed()  # /v1/models offers only names that answer
    deadline = time.monotonic() + 10
    while version.id in engine.adapters and time.monotonic() < deadline:
        time.sleep(0.05)  # the engine thread unloads it (it owns the adapter cache)
    assert version.id not in engine.adapters

    # Deploying it again serves it again, at once.
    assert http.post("/v1/endpoints", json={"model": "shape-model@1"}).status_code == 201
    assert _chat(http, "shape-model").status_code == 200
    assert "shape-model" in listed()


def test_an_endpoint_serves_its_deployed_versions_by_traffic_split(tuned_server, services):
    server, key, endpoint, _ = tuned_server
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    v1 = get_version(services.db, "shape-model@1")
    v2 = _second_version(services, "shape-model")
    # Registered only: the endpoint serves v1 alone and v2 is refused by name.
    assert _chat(http, "shape-model@2").status_code == 404
    assert [d.version.id for d in deployments(services.db, endpoint)] == [v1.id]

    deployed = http.post("/v1/endpoints", json={"model": "shape-model@2", "traffic_percentage": 30})
    assert deployed.status_code == 201, deployed.text
    split = {d["model"]: d["traffic_percentage"] for d in deployed.json()["deployed_models"]}
    assert split == {"shape-model@1": 70, "shape-model@2": 30}
    vertex = http.get(f"/v1/{PLACE}/endpoints/{endpoint}").json()
    assert vertex["trafficSplit"] == {v1.id: 70, v2.id: 30}
    assert len(vertex["deployedModels"]) == 2
    for ref in ("shape-model@1", "shape-model@2"):  # both deployed: both served when named
        assert _chat(http, ref).status_code == 200
    rng = random.Random(0)
    drawn = [pick_deployed(services.db, endpoint, rng).id for _ in range(400)]
    assert 0.22 < drawn.count(v2.id) / 400 < 0.38

    bad = http.post("/v1/endpoints", json={"model": "shape-model@2", "traffic_percentage": 101})
    assert bad.status_code in (400, 422)
    # Undeploying v1 gives its traffic to v2.
    http.post(f"/v1/endpoints/{endpoint}:undeploy", json={"model_version_id": v1.id})
    assert [(d.version.id, d.traffic_percentage) for d in deployments(services.db, endpoint)] == [
        (v2.id, 100)
    ]
    # Deploying without a percentage takes all the traffic; the other stays deployed with 0.
    deploy_version(services.db, v1.id)
    assert {
        d.version.version: d.traffic_percentage for d in deployments(services.db, endpoint)
    } == {
        1: 100,
        2: 0,
    }
    assert all(pick_deployed(services.db, endpoint, rng).id == v1.id for _ in range(20))


def test_aliases_resolve_everywhere_and_move(tuned_server, services, tmp_path):
    from tunelab.cli import app

    server, key, endpoint, _ = tuned_server
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    v2 = _second_version(services, "shape-model")
    versions = http.get("/v1/tunedModels/shape-model").json()["versions"]
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["default"]), (2, [])]
    assert versions[0]["deployment"] == {"endpoint": endpoint, "traffic_percentage": 100}
    assert versions[1]["deployment"] is None

    moved = http.put("/v1/tunedModels/shape-model/aliases/prod", json={"version": 2})
    assert moved.status_code == 200 and moved.json()["aliases"] == ["prod"]
    refused = _chat(http, "shape-model@prod")  # v2 is not deployed
    assert refused.status_code == 404 and "shape-model@2" in refused.json()["error"]["message"]
    # The CLI moves it back to the deployed version; the next request is served.
    result = CliRunner().invoke(app, ["models", "alias", "shape-model@1", "prod"])
    assert result.exit_code == 0, result.output
    assert _chat(http, "shape-model@prod").status_code == 200
    assert get_version(services.db, "shape-model@prod").version == 1
    # Deploy and export-style lookups reach aliases through the same registry function.
    assert http.post("/v1/endpoints", json={"model": "shape-model@prod"}).status_code == 201

    # Moving `default` changes what the bare name means (and so what is served).
    assert http.put("/v1/tunedModels/shape-model/aliases/default", json={"version": 2}).is_success
    assert get_version(services.db, "shape-model").id == v2.id
    assert _chat(http, "shape-model").status_code == 404  # v2 is not deployed
    assert http.get(f"/v1/{PLACE}/models/shape-model@prod").json()["versionId"] == "1"

    for alias, status in (("Bad Alias", 400), ("7", 400), ("checkpoint-5", 400)):
        r = http.put(f"/v1/tunedModels/shape-model/aliases/{alias}", json={"version": 1})
        assert r.status_code == status, (alias, r.text)
        assert "alias" in r.json()["error"]["message"]
    assert http.put("/v1/tunedModels/shape-model/aliases/x", json={"version": 9}).status_code == 404
    assert http.delete("/v1/tunedModels/shape-model/aliases/default").status_code == 400
    assert http.delete("/v1/tunedModels/shape-model/aliases/prod").status_code == 200
    gone = _chat(http, "shape-model@prod")
    assert gone.status_code == 404 and "no alias 'prod'" in gone.json()["error"]["message"]


def test_sdk_model_registry_moves_aliases_and_deploys(tuned_server, services):
    import tunelab
    from tunelab import ModelRegistry

    server, key, endpoint, _ = tuned_server
    _second_version(services, "shape-model")
    tunelab.init(url=server.url, api_key=key)
    registry = ModelRegistry("shape-model")
    registry.add_version_aliases(["candidate", "canary"], version=2)
    assert [v["aliases"] for v in registry.list_versions()] == [
        ["default"],
        ["canary", "candidate"],
    ]
    registry.deploy(version="canary", traffic_percentage=10)
    split = {
        v["version"]: (v["deployment"] or {}).get("traffic_percentage")
        for v in registry.list_versions()
    }
    assert split == {1: 90, 2: 10}
    registry.undeploy(version=2)
    assert [v["deployment"] is None for v in registry.list_versions()] == [False, True]
    registry.remove_version_aliases(["canary"])
    assert [v["aliases"] for v in registry.list_versions()] == [["default"], ["candidate"]]


@pytest.fixture
def validation_set(tmp_path):
    labels = ["red", "green", "blue", "yellow"]
    rows = [{"input_text": f"item {i}: the", "output_text": labels[i % 4]} for i in range(24)]
    return (
        write_jsonl(tmp_path / "train.jsonl", rows),
        write_jsonl(tmp_path / "validation.jsonl", rows[:6]),
        write_jsonl(tmp_path / "other-validation.jsonl", rows[6:12]),
    )


def test_deploy_policy_if_better_deploys_or_registers_only_saying_why(
    http, services, tiny_base, validation_set
):
    """The default ``if_better``: the first version deploys; a version that evaluates worse on
    the same validation set is registered only, with the comparison in the job's step, events
    and the model page; one evaluated on other data is not compared; ``always`` deploys."""
    from tunelab.jobs.worker import Worker

    train, validation, other = (
        http.post("/v1/datasets", files={"file": (p.name, p.read_bytes())}).json()["id"]
        for p in validation_set
    )

    def tune(config, validation_id=validation):
        body = {
            "tuned_model_display_name": "policy-model",
            "train_dataset": train,
            "validation_dataset": validation_id,
            # No kept checkpoints: the policy compares versions, and each kept checkpoint
            # would be evaluated (generated from) too; tests/api/test_checkpoints.py has them.
            "config": {
                "base_model": tiny_base,
                "eval_every_steps": 1,
                "keep_checkpoints": 0,
                **config,
            },
        }
        job = http.post("/v1/tuningJobs", json=body).json()
        assert Worker(services.db, services.artifacts).run_job(job["id"]).state == "SUCCEEDED"
        done = http.get(f"/v1/tuningJobs/{job['id']}").json()
        step = next(s for s in done["pipeline"] if s["name"] == "deploy")
        return done, step["outputs"]

    # v1: well trained, nothing deployed yet.
    first, out = tune({"train_steps": 12, "learning_rate_multiplier": 5.0})
    assert out["deployed"] and "nothing was deployed" in out["reason"]
    assert first["endpoint"] == endpoint_id_for("policy-model")
    # v2: barely trained (one step at a tiny rate): its validation loss is worse than v1's.
    second, out = tune({"train_steps": 1, "learning_rate_multiplier": 0.01})
    assert not out["deployed"] and out["endpoint"] is None and second["endpoint"] is None
    assert "validation loss" in out["reason"] and "worse" in out["reason"]
    assert (
        "policy-model@1" in out["reason"]
        and "tunelab models deploy policy-model@2" in out["reason"]
    )
    events = http.get(f"/v1/tuningJobs/{second['id']}/events").json()["events"]
    assert any(e["kind"] == "deploy" and "not deployed" in e["message"] for e in events)
    versions = http.get("/v1/tunedModels/policy-model").json()["versions"]
    assert versions[1]["deploy_note"].startswith("not deployed: validation loss")
    assert versions[1]["deployment"] is None and versions[1]["aliases"] == []
    assert versions[0]["aliases"] == ["default"]  # `policy-model` still means v1
    assert [
        d.version.version for d in deployments(services.db, endpoint_id_for("policy-model"))
    ] == [1]

    # v3: evaluated on another validation set: not comparable, so registered only.
    _, out = tune({"train_steps": 12, "learning_rate_multiplier": 5.0}, validation_id=other)
    assert not out["deployed"] and "not evaluated on the same held-out data" in out["reason"]
    # v4: as good as v1 on the same set (the same training, seeded): deployed, default moves.
    _, out = tune({"train_steps": 12, "learning_rate_multiplier": 5.0})
    assert out["deployed"] and "at least as good" in out["reason"], out
    # v5: deploy "never"; v6: "always", however it evaluates.
    _, out = tune({"train_steps": 1, "deploy": "never"})
    assert not out["deployed"] and "never" in out["reason"]
    _, out = tune({"train_steps": 1, "learning_rate_multiplier": 0.01, "deploy": "always"})
    assert out["deployed"]
    versions = http.get("/v1/tunedModels/policy-model").json()["versions"]
    assert {v["version"]: v["aliases"] for v in versions}[6] == ["default"]
    served = {v["version"]: (v["deployment"] or {}).get("traffic_percentage") for v in versions}
    assert served == {1: 0, 2: None, 3: None, 4: 0, 5: None, 6: 100}
    bad = http.post(
        "/v1/tuningJobs",
        json={
            "tuned_model_display_name": "policy-model",
            "train_dataset": train,
            "config": {"base_model": tiny_base, "deploy": "sometimes"},
        },
    )
    assert bad.status_code in (400, 422) and "deploy" in bad.text
