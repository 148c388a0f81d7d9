"""The model registry: versions under one name, lineage both ways, and deletion that never
removes an artifact another version still uses."""

from pathlib import Path

import pytest
from support import write_jsonl

from tunelab.configs import SFTConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.endpoints import deployed_version, endpoint_id_for
from tunelab.registry.models import (
    ModelNotRegistered,
    delete_version,
    downstream,
    get_version,
    get_versions,
    list_models,
    register_version,
    upstream,
)


def test_tuning_twice_makes_version_two_with_lineage(services, tmp_path, tiny_model_dir):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"input_text": f"q{i}", "output_text": "a"} for i in range(20)]
    )
    other = write_jsonl(
        tmp_path / "other.jsonl", [{"input_text": f"x{i}", "output_text": "b"} for i in range(20)]
    )
    jobs = []
    for data, steps in ((train, 3), (train, 4), (other, 3)):
        name = "twice" if data == train else "elsewhere"
        job, _ = submit_job(
            services.db,
            services.artifacts,
            name=name,
            datasets={"train": data},
            # no validation set to compare versions on: "always" deploys each new version
            config=SFTConfig(base_model=str(tiny_model_dir), train_steps=steps, deploy="always"),
        )
        assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
        jobs.append(store.get_job(services.db, job.id))

    versions = get_versions(services.db, "twice")
    assert [v.version for v in versions] == [1, 2]
    assert jobs[1].tuned_model_version == 2 and jobs[1].endpoint == endpoint_id_for("twice")
    v2 = get_version(services.db, "twice")
    assert v2.version == 2 and v2.source_job_id == jobs[1].id and v2.config["train_steps"] == 4
    assert v2.data_stats["train"]["examples"] == 20 and v2.adapter_sha256
    assert get_version(services.db, "twice@1").source_job_id == jobs[0].id
    assert deployed_version(services.db, endpoint_id_for("twice")).version == 2
    assert {m.name: m.versions for m in list_models(services.db)} == {"twice": 2, "elsewhere": 1}

    # Which dataset and job made version 2 ...
    ups = {
        (e.src_kind, e.src_id, e.relation) for e in upstream(services.db, "model_version", v2.id)
    }
    assert ("job", jobs[1].id, "produced") in ups and (
        "dataset",
        jobs[1].datasets["train"],
        "train",
    ) in ups
    # ... and which models came from the training dataset (not the other one).
    made = {
        e.dst_id
        for e in downstream(services.db, "dataset", jobs[0].datasets["train"])
        if e.dst_kind == "model_version"
    }
    assert made == {v.id for v in versions}


def fake_adapter(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights " + name.encode())
    return folder


def register(services, name, uri, sha):
    return register_version(
        services.db,
        name=name,
        method="sft",
        base_model="b",
        adapter_uri=str(uri),
        adapter_sha256=sha,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )


def test_delete_never_removes_an_artifact_still_used(services, tmp_path):
    shared = fake_adapter(tmp_path, "shared")
    own = fake_adapter(tmp_path, "own")
    register(services, "m", shared, "s1")  # v1
    register(services, "m", shared, "s1")  # v2 points at the same artifact
    register(services, "m", own, "s2")  # v3
    assert delete_version(services.db, services.artifacts, "m", 1) == [1]
    assert shared.exists()  # still used by v2
    assert delete_version(services.db, services.artifacts, "m", 2) == [2]
    assert not shared.exists()  # last user gone
    assert [v.version for v in get_versions(services.db, "m")] == [3]
    assert delete_version(services.db, services.artifacts, "m") == [3]
    assert not own.exists()
    with pytest.raises(ModelNotRegistered):
        get_versions(services.db, "m")
    assert Path(tmp_path).exists()
