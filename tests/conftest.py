"""Fixtures shared by the whole test suite."""

import contextlib

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


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""The database backends a store test runs on (the ``db_url`` and ``module_db_url`` params)."""


@contextlib.contextmanager
def fresh_database(kind: str, folder):
    """A fresh, empty database's URL: SQLite in a file in ``folder``, or a new database on the
    PostgreSQL server that .ci/run starts (skipped locally without one; a failure in CI, where
    it is required), dropped on the way out."""
    import os
    import uuid

    if kind == "sqlite":
        yield f"sqlite:///{folder / 'tunelab.db'}"
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
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        from tunelab.db.engine import _open

        db = _open.pop(server.rsplit("/", 1)[0] + "/" + name, None)
        if db is not None:
            db.engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A fresh, empty database for a test, on each backend (:func:`fresh_database`)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def module_db_url(tmp_path_factory):
    """The database of :func:`module_home`: SQLite. A module whose tests share a home but must
    run on both backends overrides it with :func:`module_db_url_on_each_backend`."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("module-db")) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url_on_each_backend(request, tmp_path_factory):
    """:func:`module_db_url` on SQLite and on PostgreSQL, one module-wide database each."""
    with fresh_database(request.param, tmp_path_factory.mktemp("module-db")) as url:
        yield url


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, module_db_url):
    """One home (database, artifacts, operator bases) for a module whose tests share a server
    or a trained model, so it is trained once per module, not per test. Such a module also
    overrides the suite's per-test ``tunelab_home`` with this one (the server reads it at each
    request)::

        @pytest.fixture(autouse=True)
        def tunelab_home(module_home):
            return module_home / "tunelab-home"
    """
    root = tmp_path_factory.mktemp("module-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_HOME", str(root / "tunelab-home"))
        mp.setenv("TUNELAB_DATABASE_URL", module_db_url)
        mp.setenv("TUNELAB_ARTIFACTS_URL", str(root / "artifacts"))
        yield root


@pytest.fixture(scope="module")
def module_services(module_home):
    """Services and an admin key over :func:`module_home`: (services, key)."""
    from tunelab.auth import create_key
    from tunelab.services import open_services

    services = open_services()
    return services, create_key(services.db, "tests").secret


@pytest.fixture
def services(db_url, tmp_path, monkeypatch):
    """Database and artifact store for a test, wired through settings as every face does."""
    from tunelab.services import open_services

    monkeypatch.setenv("TUNELAB_DATABASE_URL", db_url)
    monkeypatch.setenv("TUNELAB_ARTIFACTS_URL", str(tmp_path / "artifacts"))
    return open_services()
