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


def _vllm_backend(services, engine, url, python, base, max_loras, max_lora_rank, max_cpu_loras):
    """The vLLM backend the options ask for (not started), or None for the builtin engine."""
    import os

    from tunelab.serving.vllm_compat import VLLM_LORA_RANKS

    if engine not in ("builtin", "vllm"):
        raise typer.BadParameter("builtin or vllm", param_hint="--engine")
    if engine == "builtin":
        if url or python:
            raise typer.BadParameter("needs --engine vllm", param_hint="--vllm-url/--vllm-python")
        return None
    if not base:
        raise typer.BadParameter(
            "--engine vllm serves one base model: name it", param_hint="--preload"
        )
    if max_lora_rank not in VLLM_LORA_RANKS:
        raise typer.BadParameter(
            f"one of {', '.join(map(str, VLLM_LORA_RANKS))}", param_hint="--max-lora-rank"
        )
    from tunelab.config import get_settings
    from tunelab.serving.vllm_backend import VllmBackend
    from tunelab.serving.vllm_process import VllmOptions

    options = VllmOptions(
        max_loras=max_loras, max_lora_rank=max_lora_rank, max_cpu_loras=max_cpu_loras
    )
    if python is not None:
        options.python = python
    log = get_settings().home / "vllm.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return VllmBackend(
        services,
        base,
        url=url,
        api_key=os.environ.get("TUNELAB_VLLM_API_KEY"),
        options=options,
        log_path=None if url else log,
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
        help="Base model to load at start (empty: load on first request). With --engine vllm: "
        "the base model vLLM serves.",
    ),
    engine: str = typer.Option(
        "builtin",
        "--engine",
        help="builtin: TuneLab's own engine, every base and adapter, in this process. vllm: a "
        "vLLM server serves --preload's base and its adapters (TuneLab starts it from "
        "--vllm-python, or uses --vllm-url); TuneLab keeps keys, names and routes.",
    ),
    vllm_url: str | None = typer.Option(
        None,
        "--vllm-url",
        help="A running vLLM server (started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, on this machine: it loads adapters from "
        "TuneLab's data folder). Its --api-key, if any, in TUNELAB_VLLM_API_KEY.",
    ),
    vllm_python: Path | None = typer.Option(
        None,
        "--vllm-python",
        help="Python of the vLLM environment TuneLab starts vLLM with (default: the one "
        "`bash scripts/vllm_cpu_env.sh` creates, ~/.cache/tunelab/vllm-cpu-env/bin/python).",
    ),
    max_loras: int = typer.Option(4, "--max-loras", min=1, help="vLLM: adapters per batch."),
    max_lora_rank: int = typer.Option(
        16, "--max-lora-rank", help="vLLM: the largest adapter rank it loads (8, 16, 32, 64...)."
    ),
    max_cpu_loras: int = typer.Option(
        16, "--max-cpu-loras", min=1, help="vLLM: adapters kept loaded in memory."
    ),
    accelerator: str = typer.Option(
        "auto",
        "--accelerator",
        help="Where served models compute: auto (CUDA where available), cpu or cuda.",
    ),
    devices: str | None = typer.Option(
        None, "--devices", help="CUDA device to serve on, as an index with a comma (1,)."
    ),
    # auto is the default: the issue's rule was "quantized on by default only if held-out
    # quality holds", and it does (bench_serving.py's guard: a tuned adapter's 80 greedy
    # answers on the example test set all equal fp32's in bf16, int8+bf16 and int4+bf16),
    # while fp32 serves a single stream ~6x slower than llama.cpp. fp32 stays one flag away:
    # it computes as `tunelab predict` and `tunelab eval` do, so its answers equal theirs.
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="Base model weights when serving: auto (the default: measured once on this "
        "machine, cached in TUNELAB_HOME/precision_probe.json; on a CUDA device bf16 where "
        "supported, else fp32), fp32 (the reference: answers exactly as `tunelab predict` and "
        "`tunelab eval`), bf16 (fastest for batches on CPUs with AMX), int8 (weight-only), "
        "int8+bf16 (int8 for steps of few rows, bf16 for many), int4+bf16 (4-bit weights for "
        "few rows: fastest for one stream). See bench/RESULTS.md.",
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
    device = resolve_cli_device(accelerator, devices)
    services = open_services()
    from tunelab.export.archive import prune_exports

    prune_exports(services)  # past TUNELAB_EXPORT_TTL_HOURS (else swept when exports are used)
    from tunelab.serving.quantize import CHOICES

    if precision not in CHOICES:
        raise typer.BadParameter(f"choose one of {', '.join(CHOICES)}", param_hint="--precision")
    backend = _vllm_backend(
        services, engine, vllm_url, vllm_python, preload, max_loras, max_lora_rank, max_cpu_loras
    )
    if backend is not None:
        where = vllm_url or f"its own process ({backend.options.python})"
        console.print(f"starting vLLM engine for {preload} in {where} …")
        backend.start()
        console.print(f"vLLM serves {preload} at {backend.engine.url}")
    pool = InferencePool(
        services, backend=backend, device=device, precision=precision, threads=threads
    )
    if preload and backend is None:
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


def resolve_cli_device(accelerator: str, devices: str | None):
    """The device ``--accelerator``/``--devices`` name here; a clear error when there is none."""
    from tunelab.models.device import AcceleratorUnavailable, resolve_placement

    if accelerator not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(
            f"{accelerator!r}: choose auto, cpu or cuda", param_hint="--accelerator"
        )
    try:
        return resolve_placement(accelerator, devices).device
    except AcceleratorUnavailable as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from None
    except ValueError as exc:  # the spelling of --devices
        raise typer.BadParameter(str(exc), param_hint="--devices") from None
