"""``tunelab keys ...``: API keys for the server."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.tune import fail

app = typer.Typer(help="API keys for `tunelab serve`.", no_args_is_help=True)
out = Console()


class Scope(StrEnum):
    """tunelab.auth.SCOPES, as choices for the option."""

    inference = "inference"
    tune = "tune"
    admin = "admin"


@app.command("create")
def create(
    name: str = typer.Option("default", "--name", max=128, help="What the key is for."),
    scope: Scope = typer.Option(
        Scope.admin,
        "--scope",
        help="inference: call models (predict, OpenAI chat/completions/embeddings, models list). "
        "tune: also datasets, tuning jobs, reading tuned models. admin: also deploy, undeploy, "
        "delete. Give applications the least they need.",
    ),
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from tunelab.auth import create_key
    from tunelab.services import open_services

    key = create_key(open_services().db, name, scope.value)
    Console(stderr=True).print(
        f"API key {key.id} ({name}, scope {key.scope}); store it now, it is not shown again:"
    )
    print(key.secret)


@app.command("list")
def list_() -> None:
    from tunelab.auth import list_keys
    from tunelab.services import open_services

    table = Table("id", "name", "scope", "created", "last used", "revoked")
    for k in list_keys(open_services().db):
        table.add_row(
            k.id,
            k.name,
            k.scope,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    out.print(table)


@app.command("revoke")
def revoke(key_id: str) -> None:
    from tunelab.auth import revoke_key
    from tunelab.services import open_services

    if not revoke_key(open_services().db, key_id):
        fail(f"no active key {key_id!r}")
    out.print(f"revoked {key_id}")
