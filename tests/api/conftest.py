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


@pytest.fixture
def tiny_base(tiny_model_dir):
    """The tiny model made servable by the operator (``tunelab models add-base``): requests and
    job configs name it; the server never loads a folder a request names."""
    from tunelab.models.bases import add_base

    add_base("tiny-llama", str(tiny_model_dir))
    return "tiny-llama"
