"""A real TuneLab server on loopback for the API tests: uvicorn in a background thread of the
test process, on a free port, over the same services the test inspects."""

import httpx
import pytest
from support import LiveServer


@pytest.fixture
def api_key(services):
    from tunelab.auth import create_key

    return create_key(services.db, "tests").secret


@pytest.fixture
def live(services):
    """The REST server without inference (fast to start)."""
    from tunelab.api.app import create_app

    with LiveServer(create_app(services)) as server:
        yield server


@pytest.fixture
def http(live, api_key):
    with httpx.Client(
        base_url=live.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def db_url(tmp_path):
    """The API tests exercise HTTP, not the database: SQLite only (the store tests cover both)."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def _serve_tuned_model(services, api_key, folder, tiny_model_dir):
    """Train ``shape-model`` (4 steps on the tiny model), deploy it and serve it with inference:
    yields (server, key, endpoint id, pool)."""
    from support import LiveServer, write_jsonl

    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker
    from tunelab.registry.endpoints import endpoint_id_for
    from tunelab.serving.pool import InferencePool

    labels = ["red", "green", "blue", "yellow"]
    rows = [{"input_text": f"item {i}: the", "output_text": labels[i % 4]} for i in range(24)]
    job, _ = submit_job(
        services.db,
        services.artifacts,
        name="shape-model",
        datasets={"train": write_jsonl(folder / "shape.jsonl", rows)},
        config=SFTConfig(base_model=str(tiny_model_dir), train_steps=4),
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    pool = InferencePool(services)
    try:
        from tunelab.api.app import create_app

        with LiveServer(create_app(services, inference=pool)) as server:
            yield server, api_key, endpoint_id_for("shape-model"), pool
    finally:
        pool.close()


@pytest.fixture
def tuned_server(services, api_key, tmp_path, tiny_model_dir):
    """A server with inference and one tuned model, ``shape-model``, deployed on its endpoint:
    yields (server, key, endpoint id, pool). For tests that change it (close its engine,
    undeploy); read-only modules share one: :func:`module_tuned_server`."""
    yield from _serve_tuned_model(services, api_key, tmp_path, tiny_model_dir)


@pytest.fixture(scope="module")
def module_tuned_server(module_home, module_services, tiny_model_dir):
    """:func:`tuned_server`, made once for a module whose tests only read it."""
    services, api_key = module_services
    yield from _serve_tuned_model(services, api_key, module_home, tiny_model_dir)


@pytest.fixture
def inference_server(services, api_key):
    """A server with inference and no model loaded yet: for requests refused before any model
    is looked up."""
    from support import LiveServer

    from tunelab.api.app import create_app
    from tunelab.serving.pool import InferencePool

    pool = InferencePool(services)
    try:
        with LiveServer(create_app(services, inference=pool)) as server:
            yield server, api_key
    finally:
        pool.close()


@pytest.fixture
def tiny_base(tiny_model_dir):
    """The tiny model made servable by the operator (``tunelab models add-base``): requests and
    job configs name it; the server never loads a folder a request names."""
    from tunelab.models.bases import add_base

    add_base("tiny-llama", str(tiny_model_dir))
    return "tiny-llama"
