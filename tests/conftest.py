"""Fixtures shared by the whole test suite."""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The default base model's real tokenizer (converted once into ~/.cache/tunelab, ~20 s)."""
    from tunelab.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct").path)


@pytest.fixture(autouse=True)
def tunelab_home(tmp_path, monkeypatch):
    """Every test writes runs and indexes into its own home; the model cache stays shared."""
    home = tmp_path / "tunelab-home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model, SmolLM2-135M-Instruct, as a cached safetensors folder."""
    from tunelab.models import resolve_model

    return resolve_model("smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def ticket_router(tmp_path_factory):
    """The real default model tuned on the shipped ticket-routing example (minutes on CPU), once
    per session: the supervised-tuning and the evaluation demonstrations both judge this run."""
    from pathlib import Path

    from tunelab.configs import SFTConfig
    from tunelab.recipes.sft import train_sft

    examples = Path(__file__).resolve().parents[1] / "examples" / "ticket-routing"
    config = SFTConfig(train_steps=40, eval_every_steps=20, checkpoint_every_steps=40)
    result = train_sft(
        config,
        examples / "train.jsonl",
        tmp_path_factory.mktemp("ticket-router"),
        examples / "validation.jsonl",
    )
    return config, result


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    """A tiny randomly initialised Llama of the default model's architecture, with the real
    tokenizer and chat template: trains in well under a second per step on CPU."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = AutoConfig.from_pretrained(default_model_dir)
    config.update(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # With the default init (std 0.02) the tied output embedding bounds every logit near 0 and
    # loss cannot fall below ~10.5 whatever the adapter does; a wider embedding lets it learn.
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.15)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database: SQLite in a file, or a new database on the PostgreSQL server
    that .ci/run starts (skipped locally without one; a failure in CI, where it is required)."""
    import os
    import uuid

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tunelab.db'}"
        return
    server = os.environ.get("TUNELAB_TEST_POSTGRES_URL")
    if not server:
        if os.environ.get("TUNELAB_REQUIRE_POSTGRES"):
            pytest.fail("TUNELAB_REQUIRE_POSTGRES is set but TUNELAB_TEST_POSTGRES_URL is not")
        pytest.skip(
            "no PostgreSQL server: set TUNELAB_TEST_POSTGRES_URL (scripts/start_postgres.sh)"
        )
    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name
    from tunelab.db.engine import _open

    db = _open.pop(server.rsplit("/", 1)[0] + "/" + name, None)
    if db is not None:
        db.engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def services(db_url, tmp_path, monkeypatch):
    """Database and artifact store for a test, wired through settings as every face does."""
    from tunelab.services import open_services

    monkeypatch.setenv("TUNELAB_DATABASE_URL", db_url)
    monkeypatch.setenv("TUNELAB_ARTIFACTS_URL", str(tmp_path / "artifacts"))
    return open_services()
