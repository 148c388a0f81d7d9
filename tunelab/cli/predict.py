"""``tunelab predict``: ask a base or tuned model a question."""

from __future__ import annotations

import typer
from rich.console import Console

err = Console(stderr=True)


def predict(
    prompt: str = typer.Argument(
        ..., help="The prompt (a user turn, as input_text is in training)."
    ),
    model: str = typer.Option(
        ..., "--model", help="Tuned model name, adapter folder, or base model."
    ),
    system: str | None = typer.Option(None, "--system", help="System instruction."),
    temperature: float = typer.Option(0.2, help="0 means greedy."),
    top_p: float = typer.Option(0.8, "--top-p"),
    top_k: int = typer.Option(40, "--top-k"),
    max_output_tokens: int = typer.Option(256, "--max-output-tokens"),
    seed: int | None = typer.Option(None, "--seed"),
) -> None:
    """Generate a response, formatted exactly as the model was trained."""
    from pydantic import ValidationError

    from tunelab.models import ModelNotFoundError
    from tunelab.services import open_services, resolve_model_ref
    from tunelab.serving.generation import (
        GenerationParams,
        as_messages,
        generate,
        load_for_inference,
    )

    try:
        params = GenerationParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_output_tokens=max_output_tokens,
            seed=seed,
        )
    except ValidationError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    services = open_services()
    base_ref, adapter = resolve_model_ref(services, model)
    try:
        loaded = load_for_inference(base_ref=base_ref, adapter_dir=adapter)
    except ModelNotFoundError as exc:
        err.print(f"[red]error:[/] no tuned model named {model!r}, and {exc}")
        raise typer.Exit(1) from None
    print(generate(loaded, as_messages(prompt, system), params))
