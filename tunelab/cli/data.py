"""``tunelab data ...``: dataset commands."""

import typer

app = typer.Typer(help="Validate and inspect datasets.", no_args_is_help=True)
