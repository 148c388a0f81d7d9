"""Key scopes over every route of the app: a key of each scope gets 403 (saying which scope is
missing) exactly where the scope is too small, and gets through everywhere else; keys record
when they were last used; GET /v1/keys/me tells a client what its key may do."""

import re

import httpx
import pytest
from support import LiveServer
from typer.testing import CliRunner

from tunelab.api.app import create_app
from tunelab.api.errors import ApiError
from tunelab.auth import SCOPES, create_key

# What each route needs, written down independently of tunelab/api/scopes.py: a route added
# to the app fails test_every_route_has_an_expected_scope until it is listed here.
EXPECTED = {
    # inference: call models, and see which there are to call
    ("POST", "/v1/endpoints/{endpoint}:predict"): "inference",
    ("POST", "/v1/chat/completions"): "inference",
    ("POST", "/v1/completions"): "inference",
    ("POST", "/v1/embeddings"): "inference",
    ("GET", "/v1/models"): "inference",
    ("GET", "/v1/endpoints"): "inference",
    ("GET", "/v1/keys/me"): "inference",
    ("GET", "/openapi.json"): "inference",
    # tune: datasets, tuning jobs, reading the registry
    ("POST", "/v1/datasets"): "tune",
    ("GET", "/v1/datasets"): "tune",
    ("GET", "/v1/datasets/{dataset_id}"): "tune",
    ("GET", "/v1/datasets/{dataset_id}/validation"): "tune",
    ("GET", "/v1/datasets/{dataset_id}/preview"): "tune",
    ("GET", "/v1/embeddingData/validation"): "tune",
    ("POST", "/v1/tuningJobs"): "tune",
    ("GET", "/v1/tuningJobs"): "tune",
    ("GET", "/v1/tuningJobs/{job_id}"): "tune",
    ("POST", "/v1/tuningJobs/{job_id}:cancel"): "tune",
    ("POST", "/v1/tuningJobs/{job_id}:pause"): "tune",
    ("POST", "/v1/tuningJobs/{job_id}:resume"): "tune",
    ("GET", "/v1/tuningJobs/{job_id}/events"): "tune",
    ("GET", "/v1/tuningJobs/{job_id}/metrics"): "tune",
    ("GET", "/v1/tuningJobs/{job_id}/checkpoints"): "tune",
    ("GET", "/v1/tuningMethods"): "tune",
    ("GET", "/v1/tunedModels"): "tune",
    ("GET", "/v1/tunedModels/{name}"): "tune",
    ("GET", "/v1/tunedModels/{name}/lineage"): "tune",
    ("POST", "/v1/tunedModels/{name}:export"): "tune",
    ("GET", "/v1/tunedModels/{name}/checkpoints"): "tune",
    ("POST", "/v1/tunedModels/{name}/checkpoints/{step}:promote"): "tune",
    ("GET", "/v1/exports/{export_id}"): "tune",
    # OpenAI's fine-tuning API (files are datasets, jobs are tuning jobs)
    ("POST", "/v1/files"): "tune",
    ("GET", "/v1/files"): "tune",
    ("GET", "/v1/files/{file_id}"): "tune",
    ("GET", "/v1/files/{file_id}/content"): "tune",
    ("DELETE", "/v1/files/{file_id}"): "tune",
    ("POST", "/v1/fine_tuning/jobs"): "tune",
    ("GET", "/v1/fine_tuning/jobs"): "tune",
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): "tune",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "tune",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): "tune",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): "tune",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): "tune",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): "tune",
    # admin: deploy, undeploy, delete
    ("POST", "/v1/endpoints"): "admin",
    ("POST", "/v1/endpoints/{endpoint_id}:undeploy"): "admin",
    ("DELETE", "/v1/tunedModels/{name}"): "admin",
    # moving or removing an alias changes what `name@alias` serves
    ("PUT", "/v1/tunedModels/{name}/aliases/{alias}"): "admin",
    ("DELETE", "/v1/tunedModels/{name}/aliases/{alias}"): "admin",
}
# Routes issue 14 adds in parallel (a model by id, Vertex's resource paths): calling a model.
ANTICIPATED = [
    ({"GET"}, r"/v1/models/\{[^}]+\}", "inference"),
    (
        {"GET"},
        r"/v1/projects/\{[^}]+\}/locations/\{[^}]+\}/(endpoints|models)/\{[^}]+\}",
        "inference",
    ),
    ({"GET"}, r"/v1/projects/.*/publishers/[^/]+/models/\{[^}]+\}", "inference"),
    ({"POST"}, r".*:(predict|rawPredict|generateContent|streamGenerateContent)", "inference"),
]
PUBLIC = {"/health", "/", "/studio", "/docs", "/redoc"}
"""Pages without data (the Studio and the API reference's shells) and liveness."""


def expected_scope(method: str, path: str) -> str | None:
    if (method, path) in EXPECTED:
        return EXPECTED[(method, path)]
    for methods, pattern, scope in ANTICIPATED:
        if method in methods and re.fullmatch(pattern, path):
            return scope
    return None


class NoModels:
    """An inference pool that serves nothing: the routes a scope allows answer 404, not 500."""

    def _missing(self, name):
        raise ApiError(404, "model_not_found", f"no model {name!r}")

    target = endpoint_target = embedding_target = _missing

    def model_names(self):
        return []

    def close(self):
        pass


def all_routes(app):
    """(path, methods) of every route, through the included routers FastAPI may keep lazily."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes is flat
        return [(r.path, getattr(r, "methods", None)) for r in app.routes]
    return [
        (c.path, getattr(c.original_route, "methods", None))
        for c in iter_route_contexts(app.routes)
    ]


def secured_routes(app):
    for path, methods in all_routes(app):
        if not methods or path in PUBLIC:
            continue
        for method in sorted(methods - {"HEAD"}):
            yield method, path


@pytest.fixture
def app(services):
    return create_app(services, inference=NoModels())


@pytest.fixture
def keys(services):
    return {scope: create_key(services.db, f"{scope}-key", scope).secret for scope in SCOPES}


def test_every_route_has_an_expected_scope(app):
    routes = list(secured_routes(app))
    assert len(routes) >= len(EXPECTED)
    missing = [r for r in routes if expected_scope(*r) is None]
    assert not missing, f"routes without an expected scope (add them to EXPECTED): {missing}"


def test_every_route_refuses_a_key_without_its_scope_and_admits_one_with_it(app, keys):
    routes = sorted(set(secured_routes(app)))
    refused = {scope: [] for scope in SCOPES}
    # One client for every request: httpx.request makes a client (and its TLS context, ~50 ms
    # of CPU) per call; no cookies are set, so each request still carries only its own key.
    with LiveServer(app) as server, httpx.Client() as client:
        for method, path in routes:
            needed = expected_scope(method, path)
            url = server.url + re.sub(r"\{[^}]+\}", "x", path)
            for scope, secret in keys.items():
                response = client.request(
                    method, url, headers={"Authorization": f"Bearer {secret}"}, json={}
                )
                assert not client.cookies
                where = (scope, method, path, response.status_code, response.text[:200])
                assert response.status_code not in (401, 500), where
                if SCOPES.index(scope) < SCOPES.index(needed):
                    assert response.status_code == 403, where
                    error = response.json()["error"]
                    assert f"{needed!r} scope" in error["message"], where
                    if "details" in error:  # the API's shape (OpenAI's has no details)
                        assert error["code"] == "forbidden", where
                        assert error["details"] == {"required_scope": needed, "key_scope": scope}
                    refused[scope].append((method, path))
                else:
                    assert response.status_code != 403, where
    # The table is not vacuous: each narrower scope is refused somewhere, admin nowhere.
    assert refused["inference"] and refused["tune"] and not refused["admin"]
    assert set(refused["tune"]) < set(refused["inference"])


def test_public_pages_need_no_key(app):
    with LiveServer(app) as server:
        for path in sorted(PUBLIC):
            assert httpx.get(server.url + path, follow_redirects=True).status_code == 200, path


def test_keys_me_says_what_the_key_may_do(app, keys):
    with LiveServer(app) as server:
        got = {
            scope: httpx.get(server.url + "/v1/keys/me", headers={"x-api-key": secret}).json()
            for scope, secret in keys.items()
        }
    assert got["inference"]["scopes"] == ["inference"]
    assert got["tune"]["scopes"] == ["inference", "tune"]
    assert got["admin"]["scopes"] == ["inference", "tune", "admin"]
    assert got["tune"]["name"] == "tune-key" and got["tune"]["scope"] == "tune"
    assert all("secret" not in str(v).lower() for v in got.values())


def test_last_used_is_recorded_and_shown_by_keys_list(app, services, keys):
    from tunelab.auth import list_keys
    from tunelab.cli import app as cli

    with LiveServer(app) as server:
        for _ in range(3):
            response = httpx.get(
                server.url + "/v1/models", headers={"Authorization": f"Bearer {keys['inference']}"}
            )
            assert response.status_code == 200
    used = {k.name: k.last_used_at for k in list_keys(services.db)}
    assert used["inference-key"] is not None
    assert used["tune-key"] is None and used["admin-key"] is None
    listing = CliRunner().invoke(cli, ["keys", "list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if "inference-key" in line)
    assert f"{used['inference-key']:%Y-%m-%d %H:%M}" in row
    assert "inference" in row
