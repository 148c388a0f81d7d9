"""``tunelab serve``: the API server, with a worker in the same process unless told otherwise."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import typer
from rich.console import Console

from tunelab.config import DEFAULT_BASE_MODEL


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, tls: bool) -> str | None:
    """What to tell the operator who binds beyond loopback without TLS: keys and prompts would
    cross the network in clear text, readable by anyone on the path."""
    if tls or is_loopback(host):
        return None
    return (
        f"warning: --host {host} without TLS: API keys, prompts and answers travel in clear "
        "text. Give --ssl-certfile and --ssl-keyfile, or put a TLS proxy in front and serve on "
        "127.0.0.1."
    )


def serve(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Loopback by default. Any other address (0.0.0.0 exposes every interface) should "
        "come with --ssl-certfile/--ssl-keyfile, as keys travel in every request.",
    ),
    port: int = typer.Option(8080, "--port"),
    ssl_certfile: Path | None = typer.Option(
        None,
        "--ssl-certfile",
        exists=True,
        dir_okay=False,
        help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile.",
    ),
    ssl_keyfile: Path | None = typer.Option(
        None,
        "--ssl-keyfile",
        exists=True,
        dir_okay=False,
        help="The certificate's PEM private key.",
    ),
    worker: bool = typer.Option(
        True, "--worker/--no-worker", help="Run queued tuning jobs in this process."
    ),
    preload: str | None = typer.Option(
        DEFAULT_BASE_MODEL,
        "--preload",
        help="Base model to load at start (empty: load on first request).",
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="Base model weights when serving: fp32 (the reference), bf16 (fastest for "
        "batches on CPUs with AMX), int8 (weight-only; fastest for one stream). "
        "See bench/RESULTS.md.",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads of each serving engine (default: measured and re-chosen while "
        "serving, as other work on the machine comes and goes).",
    ),
) -> None:
    """Start the server: REST API, Vertex-style prediction, OpenAI-compatible API, Studio.

    Every route but /health needs an API key, the API reference included: /openapi.json
    answers only with a key, and the /docs and /redoc pages fetch it with the key the Studio
    holds in the browser tab (or one typed into the page).
    """
    import uvicorn

    from tunelab.api.app import create_app
    from tunelab.jobs.worker import Worker
    from tunelab.services import open_services
    from tunelab.serving.pool import InferencePool

    console = Console(stderr=True)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter(
            "give both --ssl-certfile and --ssl-keyfile, or neither",
            param_hint="--ssl-certfile/--ssl-keyfile",
        )
    tls = ssl_certfile is not None
    warning = exposure_warning(host, tls)
    if warning:
        console.print(warning, style="bold yellow", markup=False, soft_wrap=True)
    services = open_services()
    from tunelab.serving.quantize import PRECISIONS

    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose one of {', '.join(PRECISIONS)}", param_hint="--precision")
    pool = InferencePool(services, precision=precision, threads=threads)
    if preload:
        console.print(f"loading base model {preload} …")
        pool.engine_for_base(preload)
    app = create_app(services, inference=pool)
    background = None
    if worker:
        background = Worker(services.db, services.artifacts)
        threading.Thread(target=background.run_forever, name="tunelab-worker", daemon=True).start()
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    console.print(f"TuneLab serving on {url}  (Studio: {url}/, API reference: {url}/docs)")
    console.print("every route but /health needs an API key: create one with `tunelab keys create`")
    if worker:
        console.print(f"worker {background.id} runs queued tuning jobs in this process")
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=str(ssl_certfile) if tls else None,
            ssl_keyfile=str(ssl_keyfile) if tls else None,
        )
    finally:
        if background is not None:
            background.shutdown.set()
        pool.close()
