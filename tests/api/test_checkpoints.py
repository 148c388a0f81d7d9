"""Kept checkpoints over HTTP: listed with their training metrics and in-job evaluation,
served as ``name@checkpoint-STEP`` (that checkpoint's outputs, not the final adapter's), and
promoted to a version with lineage."""

import httpx
import pytest
from support import LiveServer, color_rows, write_jsonl


@pytest.fixture
def checkpointed(services, api_key, tmp_path, tiny_model_dir):
    """A finished SFT job, ``ckpt-model``, that kept steps 4, 8 and 12, served with inference:
    yields (http client, job id)."""
    from tunelab.api.app import create_app
    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker
    from tunelab.serving.pool import InferencePool

    job, _ = submit_job(
        services.db,
        services.artifacts,
        name="ckpt-model",
        datasets={
            "train": write_jsonl(tmp_path / "train.jsonl", color_rows(32)),
            "validation": write_jsonl(tmp_path / "val.jsonl", color_rows(8, offset=500)),
        },
        config=SFTConfig(
            base_model=str(tiny_model_dir),
            train_steps=12,
            batch_size=8,
            learning_rate_multiplier=10.0,
            eval_every_steps=4,
            checkpoint_every_steps=4,
            early_stopping_patience=None,
            keep_checkpoints=3,
            seed=7,
        ),
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    pool = InferencePool(services)
    try:
        with LiveServer(create_app(services, inference=pool)) as server:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
            ) as http:
                yield http, job.id
    finally:
        pool.close()


def answer(http, model: str) -> str:
    r = http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "item 3: the yellow one"}],
            "temperature": 0,
            "max_tokens": 6,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_checkpoints_are_listed_served_and_promoted(checkpointed, services, api_key):
    from tunelab.bundle import verify_adapter_bundle
    from tunelab.registry.checkpoints import job_checkpoints
    from tunelab.serving.generation import GenerationParams, generate, load_for_inference

    http, job_id = checkpointed
    listed = http.get("/v1/tunedModels/ckpt-model/checkpoints").json()
    assert listed["version"] == 1 and listed["job_id"] == job_id
    ckpts = listed["checkpoints"]
    assert [c["step"] for c in ckpts] == [4, 8, 12]
    for c in ckpts:
        assert c["model"] == f"ckpt-model@checkpoint-{c['step']}"
        assert c["epoch"] == pytest.approx(c["step"] / 4, abs=1e-4)  # 32 rows, batch 8
        assert {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy"} <= c["metrics"].keys()
        # evaluated in the job with tunelab eval's metrics, each with its interval
        assert {"exact_match", "loss", "perplexity"} <= c["evaluation"].keys()
        assert {"value", "low", "high"} <= c["evaluation"]["loss"].keys()
        assert c["headline_metric"] in c["evaluation"]
    best = min(ckpts, key=lambda c: c["metrics"]["eval_loss"])
    assert [c["step"] for c in ckpts if c["is_final"]] == [best["step"]]
    # The same data for the job's page.
    by_job = http.get(f"/v1/tuningJobs/{job_id}/checkpoints").json()
    assert [c["step"] for c in by_job["checkpoints"]] == [4, 8, 12]
    assert by_job["checkpoints"][0]["evaluation"] == ckpts[0]["evaluation"]

    # The early checkpoint's evaluation is its own, not the final adapter's.
    early = ckpts[0]
    assert early["evaluation"]["loss"]["value"] != pytest.approx(
        best["evaluation"]["loss"]["value"]
    )

    # Served: name@checkpoint-4 answers as that checkpoint's adapter does, not as the final.
    served_early, served_final = answer(http, "ckpt-model@checkpoint-4"), answer(http, "ckpt-model")
    folder = services.artifacts.local_path(job_checkpoints(services.db, job_id)[0].adapter["uri"])
    verify_adapter_bundle(folder)
    loaded = load_for_inference(adapter_dir=folder)
    prompt = [{"role": "user", "content": "item 3: the yellow one"}]
    local = generate(loaded, prompt, GenerationParams(temperature=0, max_output_tokens=6))
    assert served_early == local
    assert served_early != served_final

    missing = http.post(
        "/v1/chat/completions",
        json={"model": "ckpt-model@checkpoint-5", "messages": prompt, "max_tokens": 2},
    )
    assert missing.status_code == 404 and "kept: [4, 8, 12]" in missing.text

    # Promote: the next version, holding the checkpoint's adapter, with lineage.
    r = http.post("/v1/tunedModels/ckpt-model/checkpoints/4:promote")
    assert r.status_code == 201, r.text
    promoted = r.json()
    assert promoted["version"] == 2
    assert promoted["adapter_sha256"] == job_checkpoints(services.db, job_id)[0].adapter["sha256"]
    assert promoted["metrics"]["checkpoint"]["job_id"] == job_id
    assert promoted["metrics"]["eval_loss"] == early["metrics"]["eval_loss"]
    again = http.post("/v1/tunedModels/ckpt-model/checkpoints/4:promote").json()
    assert again["id"] == promoted["id"]  # promoting twice adds no third version
    lineage = http.get("/v1/tunedModels/ckpt-model/lineage", params={"version": 2}).json()
    edges = {
        (e["from"]["kind"], e["from"].get("ref") or e["from"]["id"], e["relation"])
        for e in lineage["upstream"]
    }
    assert ("job", job_id, "promoted_checkpoint") in edges
    assert ("model_version", "ckpt-model@1", "promoted_checkpoint") in edges
    assert any(kind == "dataset" and rel == "train" for kind, _, rel in edges)
    # A promoted version is registered, not deployed: it is served once deployed.
    assert (
        http.post(
            "/v1/chat/completions", json={"model": "ckpt-model@2", "messages": prompt}
        ).status_code
        == 404
    )
    assert http.post("/v1/endpoints", json={"model": "ckpt-model@2"}).status_code == 201
    assert answer(http, "ckpt-model@2") == served_early
    # The listing records the promotion; the checkpoints stay servable by step.
    after = http.get("/v1/tunedModels/ckpt-model/checkpoints").json()["checkpoints"]
    assert after[0]["promoted_to"] == ["ckpt-model@2"] and after[0]["model"]
    assert answer(http, "ckpt-model@checkpoint-4") == served_early

    nothing = http.post("/v1/tunedModels/ckpt-model/checkpoints/5:promote")
    assert nothing.status_code == 404 and "step 5" in nothing.text

    # The SDK reads the same listing and promotes through the same route.
    import tunelab
    from tunelab.sdk.models import TextGenerationModel

    tunelab.init(url=str(http.base_url), api_key=api_key)
    model = TextGenerationModel.from_pretrained("base").get_tuned_model("ckpt-model@1")
    assert [c["step"] for c in model.list_checkpoints()] == [4, 8, 12]
    by_sdk = model.get_tuned_model(model.list_checkpoints()[1]["model"])
    assert isinstance(by_sdk.predict("item 3: the yellow one", temperature=0).text, str)
    assert model.promote_checkpoint(8).model == "ckpt-model@3"
