"""A job on several machines opens an unauthenticated torch.distributed port on the server's
machine (machine 0 listens on ``master_port``): only an admin key may ask for one over REST."""

import httpx
from support import color_rows, write_jsonl

from tunelab.auth import create_key


def test_only_an_admin_key_submits_a_job_on_several_machines(
    http, live, services, tiny_base, tmp_path
):
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    dataset = http.post("/v1/datasets", files={"file": ("t.jsonl", train.read_bytes())}).json()
    body = {
        "tuned_model_display_name": "m",
        "train_dataset": dataset["id"],
        "config": {"base_model": tiny_base, "nodes": 2, "master_addr": "10.0.0.1"},
    }
    tune_key = create_key(services.db, "tuner", "tune").secret
    with httpx.Client(
        base_url=live.url, headers={"Authorization": f"Bearer {tune_key}"}, timeout=60
    ) as tuner:
        refused = tuner.post("/v1/tuningJobs", json=body)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["details"]["field"] == "config.nodes"
        assert "admin" in error["message"]
        assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []  # nothing queued
        one_machine = {**body, "config": {"base_model": tiny_base, "processes": 2}}
        assert tuner.post("/v1/tuningJobs", json=one_machine).status_code == 201
    created = http.post("/v1/tuningJobs", json=body)  # the admin key
    assert created.status_code == 201, created.text
    assert created.json()["config"]["nodes"] == 2
