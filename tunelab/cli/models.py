"""``tunelab models ...``: the registry of tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.tune import fail

app = typer.Typer(
    help="Tuned models in the registry, and the base models the server may load.",
    no_args_is_help=True,
)
out = Console()


@app.command("list")
def list_() -> None:
    """Tuned models with their latest version; "vLLM": whether vLLM can serve that version
    (`tunelab models show NAME` says why not)."""
    from tunelab.registry.models import list_models
    from tunelab.services import open_services

    services = open_services()
    table = Table("name", "versions", "latest", "method", "base model", "vLLM")
    for m in list_models(services.db, services.artifacts):
        table.add_row(
            m.name,
            str(m.versions),
            str(m.latest_version),
            m.method,
            m.base_model,
            _vllm_cell(m.vllm),
        )
    out.print(table)


def _vllm_cell(verdict: dict | None) -> str:
    if verdict is None:
        return "?"
    if verdict["servable"]:
        return f"yes (--max-lora-rank ≥ {verdict['min_max_lora_rank']})"
    return "no"


@app.command("show")
def show(
    name: str,
    version: int | None = typer.Option(None, "--version"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A version (the latest by default) with its config, data statistics and metrics."""
    from tunelab.jobs.views import version_view
    from tunelab.registry.models import ModelNotRegistered, adapter_artifact, get_version
    from tunelab.services import open_services

    services = open_services()
    try:
        v = get_version(services.db, name, version)
    except ModelNotRegistered as exc:
        fail(str(exc))
    from tunelab.serving.vllm_compat import check_version

    view = version_view(v, services.db) | {"adapter_uri": adapter_artifact(services.db, v).uri}
    view["vllm"] = check_version(services, v).as_dict()
    if as_json:
        print(json.dumps(view, indent=2, default=str))
        return
    out.print(
        f"[bold]{v.model_name}[/] version {v.version} ({v.method} on {v.base_model}), job {v.source_job_id}"
    )
    out.print(f"adapter: {view['adapter_uri']} sha256 {v.adapter_sha256[:16]}…")
    deployment = view["deployment"]
    out.print(
        f"aliases: {', '.join(view['aliases']) or '-'}; "
        + (
            f"deployed on {deployment['endpoint']} ({deployment['traffic_percentage']}% of its "
            "traffic)"
            if deployment
            else "not deployed"
        )
    )
    if v.deploy_note:
        out.print(f"its job: {v.deploy_note}")
    vllm = view["vllm"]
    if vllm["servable"]:
        out.print(f"vLLM: servable (needs --max-lora-rank ≥ {vllm['min_max_lora_rank']})")
    else:
        out.print("vLLM: not servable: " + "; ".join(vllm["reasons"]), markup=False)
    for key in ("metrics", "evaluation"):
        if view[key]:
            out.print(f"{key}: {json.dumps(view[key], default=str)[:800]}")


@app.command("deploy")
def deploy(
    ref: str = typer.Argument(..., help="name, name@version or name@alias"),
    traffic: int | None = typer.Option(
        None, "--traffic", min=0, max=100, help="Its % of the endpoint's requests (default all)."
    ),
) -> None:
    """Deploy a version on its model's endpoint, next to the versions deployed there."""
    from tunelab.registry.endpoints import deploy_version
    from tunelab.registry.models import ModelNotRegistered, get_version
    from tunelab.services import open_services

    services = open_services()
    try:
        v = get_version(services.db, ref)
    except ModelNotRegistered as exc:
        fail(str(exc))
    endpoint = deploy_version(services.db, v.id, traffic)
    out.print(f"deployed {v.model_name}@{v.version} on {endpoint.id}")
    from tunelab.serving.vllm_compat import check_version

    verdict = check_version(services, v)  # this process cannot know a server's --max-lora-rank
    if not verdict.servable:
        out.print(
            "note: a server with --engine vllm cannot serve it: " + "; ".join(verdict.reasons),
            markup=False,
        )


@app.command("undeploy")
def undeploy(ref: str = typer.Argument(..., help="name@version or name@alias")) -> None:
    """Stop serving a version: requests naming it are refused from now on. (Undeploying through
    the API also unloads it from the server's memory at once; from here, the builtin engine
    unloads it when its adapter cache next needs room, a server with --engine vllm within 2 s.)"""
    from tunelab.registry.endpoints import endpoint_id_for
    from tunelab.registry.endpoints import undeploy as undeploy_version
    from tunelab.registry.models import ModelNotRegistered, get_version
    from tunelab.services import open_services

    services = open_services()
    try:
        v = get_version(services.db, ref)
    except ModelNotRegistered as exc:
        fail(str(exc))
    if not undeploy_version(services.db, endpoint_id_for(v.model_name), v.id):
        fail(f"{v.model_name}@{v.version} is not deployed")
    out.print(f"undeployed {v.model_name}@{v.version}")


@app.command("alias")
def alias(
    ref: str = typer.Argument(..., help="name@version the alias is to name"),
    alias: str = typer.Argument(..., help="e.g. prod; 'default' is what the bare name means"),
) -> None:
    """Point NAME@ALIAS at a version (moving it if it named another)."""
    from tunelab.registry.aliases import InvalidAlias, set_alias
    from tunelab.registry.models import ModelNotRegistered
    from tunelab.services import open_services

    name, at, number = ref.rpartition("@")
    if not at or not number.isdigit():
        fail(f"{ref!r}: name the version by its number, as NAME@VERSION (e.g. {ref}@2)")
    try:
        v = set_alias(open_services().db, name, int(number), alias)
    except (InvalidAlias, ModelNotRegistered) as exc:
        fail(str(exc))
    out.print(f"{name}@{alias} -> version {v.version}")


@app.command("unalias")
def unalias(ref: str = typer.Argument(..., help="name@alias to remove")) -> None:
    """Remove a user alias ('default' can only be moved, with `tunelab models alias`)."""
    from tunelab.registry.aliases import InvalidAlias, remove_alias
    from tunelab.services import open_services

    name, _, word = ref.rpartition("@")
    try:
        remove_alias(open_services().db, name, word)
    except (InvalidAlias, LookupError) as exc:
        fail(str(exc))
    out.print(f"removed {ref}")


@app.command("delete")
def delete(
    name: str, version: int | None = typer.Option(None, "--version", help="Only this version.")
) -> None:
    from tunelab.registry.models import ModelNotRegistered, delete_version
    from tunelab.services import open_services

    services = open_services()
    try:
        removed = delete_version(services.db, services.artifacts, name, version)
    except ModelNotRegistered as exc:
        fail(str(exc))
    out.print(f"deleted {name} version(s) {removed}")


@app.command("lineage")
def lineage(
    name: str,
    version: int | None = typer.Option(None, "--version"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What made a model version (datasets, job, config), and what was made from its datasets."""
    from tunelab.registry.models import (
        ModelNotRegistered,
        downstream,
        get_version,
        upstream,
        version_refs,
    )
    from tunelab.services import open_services

    db = open_services().db
    try:
        v = get_version(db, name, version)
    except ModelNotRegistered as exc:
        fail(str(exc))
    edges = upstream(db, "model_version", v.id)
    refs = version_refs(db, {e.src_id for e in edges if e.src_kind == "model_version"})
    ups = [
        {
            "from": f"{e.src_kind}:{e.src_id}"
            + (f" ({refs[e.src_id]})" if e.src_id in refs else ""),
            "to": f"{e.dst_kind}:{e.dst_id}",
            "relation": e.relation,
        }
        for e in edges
    ]
    datasets = {e["from"].split(":", 1)[1] for e in ups if e["from"].startswith("dataset:")}
    downs = [
        {
            "from": f"{e.src_kind}:{e.src_id}",
            "to": f"{e.dst_kind}:{e.dst_id}",
            "relation": e.relation,
        }
        for d in sorted(datasets)
        for e in downstream(db, "dataset", d)
    ]
    if as_json:
        print(
            json.dumps(
                {"model_version": v.id, "upstream": ups, "from_same_datasets": downs}, indent=2
            )
        )
        return
    out.print(f"[bold]{v.model_name}@{v.version}[/] ({v.id}) was made from:")
    for e in ups:
        out.print(f"  {e['from']} --{e['relation']}--> {e['to']}")
    out.print("made from the same datasets:")
    for e in downs:
        if e["to"].startswith("model_version:"):
            out.print(f"  {e['from']} --{e['relation']}--> {e['to']}")


@app.command("export")
def export(
    model: str = typer.Argument(..., help="NAME or NAME@VERSION of a tuned model."),
    fmt: str = typer.Option(
        ..., "--format", help="peft | merged | gguf | gguf-lora (embedding models: merged)."
    ),
    output: Path = typer.Option(..., "--output", help="Folder to create (or an empty one)."),
    quantization: str | None = typer.Option(
        None, "--quantization", help="f16 (default) or q8_0; GGUF formats only."
    ),
) -> None:
    """Write a tuned model in a format other tools load: PEFT/vLLM, transformers, llama.cpp,
    Ollama (a Modelfile beside the GGUF)."""
    from tunelab.export import ExportError, export_model
    from tunelab.registry.models import ModelNotRegistered
    from tunelab.services import open_services

    try:
        result = export_model(open_services(), model, fmt, output, quantization)
    except (ModelNotRegistered, ExportError) as exc:
        fail(str(exc))
    out.print(f"exported {result.model} as {result.format} to {result.folder}:")
    for name in result.files:
        out.print(f"  {name}")


@app.command("import")
def import_(
    folder: Path = typer.Argument(..., help="A PEFT LoRA adapter folder (safetensors)."),
    name: str = typer.Option(..., "--name", help="Tuned model name to register it under."),
    base: str = typer.Option(..., "--base", help="Base model it was tuned from."),
) -> None:
    """Register an existing PEFT LoRA adapter as a version of NAME (lineage: imported)."""
    from tunelab.models.catalog import ModelNotFoundError
    from tunelab.registry.importing import AdapterImportError, import_adapter
    from tunelab.services import open_services

    try:
        version = import_adapter(open_services(), folder, name=name, base=base)
    except (AdapterImportError, ModelNotFoundError) as exc:
        fail(str(exc))
    out.print(f"imported {folder} as {version.model_name}@{version.version} on {base}")


@app.command("add-base")
def add_base(
    name: str = typer.Argument(..., help="The name requests will use: 1-128 letters, digits, -_."),
    source: str = typer.Argument(
        ..., help="A local Hugging Face model folder (safetensors) or a hub id (org/name)."
    ),
) -> None:
    """Make a base model servable under NAME (the server never loads a folder a request names;
    this is how the operator makes one available to requests, tuning jobs and the Studio)."""
    from tunelab.models.bases import add_base as add
    from tunelab.models.catalog import ModelNotFoundError, UnsafeModelError
    from tunelab.models.names import InvalidModelName
    from tunelab.registry.models import list_models
    from tunelab.services import open_services

    tuned = {m.name for m in list_models(open_services().db)}
    try:
        stored = add(name, source, taken=tuned)
    except (InvalidModelName, ModelNotFoundError, UnsafeModelError, FileNotFoundError) as exc:
        fail(str(exc))
    out.print(f"base model [bold]{name}[/] -> {stored}")


@app.command("list-bases")
def list_bases() -> None:
    """The base models requests may name: the catalog and those added with add-base."""
    from tunelab.models.bases import catalog_names, operator_bases

    table = Table("name", "source")
    for name in sorted(catalog_names()):
        table.add_row(name, "catalog")
    for name, source in sorted(operator_bases().items()):
        table.add_row(name, source)
    out.print(table)


@app.command("remove-base")
def remove_base(name: str) -> None:
    """Stop serving a base model added with add-base (its files are left alone)."""
    from tunelab.models.bases import remove_base as remove

    try:
        remove(name)
    except KeyError as exc:
        fail(str(exc.args[0]))
    out.print(f"base model {name} removed")


from tunelab.cli.model_checkpoints import checkpoints, promote  # noqa: E402

app.command("checkpoints")(checkpoints)
app.command("promote")(promote)
