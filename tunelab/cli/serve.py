"""``tunelab serve``: the API server, with a worker in the same process unless told otherwise."""

from __future__ import annotations

import threading

import typer
from rich.console import Console

from tunelab.config import DEFAULT_BASE_MODEL


def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Loopback by default; 0.0.0.0 exposes the server."
    ),
    port: int = typer.Option(8080, "--port"),
    worker: bool = typer.Option(
        True, "--worker/--no-worker", help="Run queued tuning jobs in this process."
    ),
    preload: str | None = typer.Option(
        DEFAULT_BASE_MODEL,
        "--preload",
        help="Base model to load at start (empty: load on first request).",
    ),
) -> None:
    """Start the server: REST API, Vertex-style prediction, OpenAI-compatible API."""
    import uvicorn

    from tunelab.api.app import create_app
    from tunelab.jobs.worker import Worker
    from tunelab.services import open_services
    from tunelab.serving.pool import InferencePool

    console = Console(stderr=True)
    services = open_services()
    pool = InferencePool(services)
    if preload:
        console.print(f"loading base model {preload} …")
        pool.engine_for_base(preload)
    app = create_app(services, inference=pool)
    background = None
    if worker:
        background = Worker(services.db, services.artifacts)
        threading.Thread(target=background.run_forever, name="tunelab-worker", daemon=True).start()
    console.print(
        f"TuneLab serving on http://{host}:{port}  (Studio: http://{host}:{port}/, OpenAPI: /docs)"
    )
    console.print("every route but /health needs an API key: create one with `tunelab keys create`")
    if worker:
        console.print(f"worker {background.id} runs queued tuning jobs in this process")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if background is not None:
            background.shutdown.set()
        pool.close()
