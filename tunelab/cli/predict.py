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
        ...,
        "--model",
        help="Tuned model (name or name@version), endpoint id, base model name (catalog or "
        "added with `tunelab models add-base`), or an adapter bundle folder on this machine.",
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

    from tunelab.bundle import BundleIntegrityError, NotABundleError
    from tunelab.models import ModelNotFoundError
    from tunelab.registry.resolve import ModelNotFound
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
    try:
        # The operator's own CLI may name an adapter bundle folder; every load is checked.
        base_ref, adapter = resolve_model_ref(services, model, allow_folder=True)
        loaded = load_for_inference(base_ref=base_ref, adapter_dir=adapter)
    except (ModelNotFound, ModelNotFoundError, BundleIntegrityError, NotABundleError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    print(generate(loaded, as_messages(prompt, system), params))
