"""A registered tuned model on the tiny base, made once per module: a real SFT run (a few
steps at a high rate, so the adapter changes the outputs), its bundle in an artifact store and
a registry version, over services of its own."""

import pytest
from support import color_rows, write_jsonl


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    from tunelab.configs import SFTConfig
    from tunelab.db import open_database
    from tunelab.recipes.sft import train_sft
    from tunelab.registry.artifacts import open_artifact_store
    from tunelab.registry.models import register_version
    from tunelab.services import Services

    root = tmp_path_factory.mktemp("export")
    services = Services(
        db=open_database(f"sqlite:///{root / 'tunelab.db'}"),
        artifacts=open_artifact_store(str(root / "artifacts")),
    )
    train = write_jsonl(root / "train.jsonl", color_rows(24))
    config = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=8,
        learning_rate_multiplier=20,
        precision="fp32",
    )
    result = train_sft(config, train, root / "run")
    stored = services.artifacts.put_dir(result.adapter_dir, "jobs/job-export-test/adapter")
    register_version(
        services.db,
        name="colors",
        method="sft",
        base_model=str(tiny_model_dir),
        adapter_uri=stored.uri,
        adapter_sha256=stored.sha256,
        adapter_size=stored.size_bytes,
        config=config.model_dump(),
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )
    return services, services.artifacts.local_path(stored.uri)
