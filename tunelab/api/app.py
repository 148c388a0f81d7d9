"""The FastAPI application: every route but /health behind an API key, JSON errors, body limits.

``create_app`` takes the services (database, artifact store) and, optionally, the inference
pool, so tests and ``tunelab serve`` build the same app.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from tunelab import __version__
from tunelab.api.deps import require_key
from tunelab.api.errors import install_error_handlers
from tunelab.api.limits import BodyLimitMiddleware
from tunelab.api.routes import (
    datasets,
    docs,
    embedding_data,
    endpoints,
    exports,
    health,
    jobs,
    keys,
    methods,
    tuned_models,
)
from tunelab.auth import UsageRecorder
from tunelab.services import Services
from tunelab.studio import mount_studio

DEFAULT_BODY_LIMIT = 4 * 1024 * 1024
"""JSON request bodies (prompts, job specs)."""
DEFAULT_UPLOAD_LIMIT = 1024 * 1024 * 1024
"""Dataset uploads."""


def create_app(
    services: Services,
    inference=None,
    *,
    body_limit: int = DEFAULT_BODY_LIMIT,
    upload_limit: int = DEFAULT_UPLOAD_LIMIT,
) -> FastAPI:
    app = FastAPI(
        title="TuneLab",
        version=__version__,
        description="Self-hosted tuning and serving of open models, shaped like Vertex AI.",
        # FastAPI's own docs routes answer anyone; routes/docs.py serves them behind the key.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.key_usage = UsageRecorder(services.db)
    app.state.inference = inference
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=body_limit,
        upload_limit=upload_limit,
        upload_prefix=("/v1/datasets", "/v1/files"),
    )
    app.include_router(health.router)
    secured = [Depends(require_key)]
    for module in (datasets, embedding_data, jobs, methods, tuned_models, exports, endpoints, keys):
        app.include_router(module.router, dependencies=secured)
    from tunelab.api.routes import openai_files, openai_fine_tuning

    for module in (openai_files, openai_fine_tuning):  # OpenAI's shapes, errors included
        app.include_router(module.router, dependencies=secured)
    if inference is not None:
        from tunelab.api.routes import embeddings, openai_compat, predict, vertex

        app.include_router(predict.router, dependencies=secured)
        app.include_router(vertex.router, dependencies=secured)
        app.include_router(openai_compat.router, dependencies=secured)
        app.include_router(embeddings.router, dependencies=secured)
    app.include_router(docs.schema_router, dependencies=secured)
    app.include_router(docs.pages_router)  # pages without data; they fetch the schema with a key
    mount_studio(app)  # public page and assets; every API call they make needs a key
    return app
