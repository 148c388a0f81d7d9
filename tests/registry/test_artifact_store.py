"""The artifact store behind an fsspec URL (here memory://, standing in for s3:// or gs://):
a job's datasets and adapter go there, and the registry serves them back."""

import pytest
from support import write_jsonl

from tunelab.configs import SFTConfig
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.artifacts import ArtifactStore, tree_sha256
from tunelab.registry.models import adapter_artifact, get_version
from tunelab.services import Services, resolve_model_ref


def test_keys_are_system_made():
    store = ArtifactStore("memory://keys")
    for bad in ("../etc/passwd", "/abs", "a/../../b", "Upper/Case", "sp ace"):
        with pytest.raises(ValueError, match="system-made"):
            store.uri(bad)


def test_job_through_an_object_store(db_url, tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.db import open_database

    store = ArtifactStore("memory://tunelab-test-bucket")
    services = Services(db=open_database(db_url), artifacts=store)
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"input_text": f"q{i}", "output_text": "a"} for i in range(20)]
    )
    job, _ = submit_job(
        services.db,
        store,
        config=SFTConfig(base_model=str(tiny_model_dir), train_steps=2),
        name="remote",
        datasets={"train": train},
    )
    assert Worker(services.db, store).run_job(job.id).state == "SUCCEEDED"
    artifact = adapter_artifact(services.db, get_version(services.db, "remote"))
    assert artifact.uri.startswith("memory://")
    _, local = resolve_model_ref(services, "remote")
    assert (local / "adapter_model.safetensors").is_file()
    assert tree_sha256(local) == artifact.sha256
