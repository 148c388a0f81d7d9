"""``tunelab tune sft``: tune a model in one command, with a progress bar, resumable."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunelab.config import DEFAULT_BASE_MODEL

app = typer.Typer(help="Tune a model.", no_args_is_help=True)
console = Console(stderr=True)


@app.command("sft")
def sft(
    train: Path = typer.Option(..., "--train", exists=True, dir_okay=False, help="Training JSONL."),
    name: str = typer.Option(..., "--name", min=1, help="Name of the tuned model."),
    validation: Path | None = typer.Option(
        None, "--validation", exists=True, dir_okay=False, help="Validation JSONL."
    ),
    base: str = typer.Option(
        DEFAULT_BASE_MODEL, "--base", help="Base model: catalog name, folder or hub id."
    ),
    epochs: int | None = typer.Option(None, help="Passes over the data (default 3)."),
    train_steps: int | None = typer.Option(
        None, "--train-steps", help="Optimizer steps, instead of epochs."
    ),
    learning_rate_multiplier: float = typer.Option(1.0, "--learning-rate-multiplier"),
    adapter_size: int = typer.Option(8, "--adapter-size", help="LoRA rank: 1, 2, 4, 8 or 16."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_seq_length: int = typer.Option(1024, "--max-seq-length"),
    seed: int = typer.Option(42, "--seed"),
    eval_every_steps: int = typer.Option(20, "--eval-every-steps"),
    checkpoint_every_steps: int = typer.Option(20, "--checkpoint-every-steps"),
    early_stopping_patience: int | None = typer.Option(
        3, "--early-stopping-patience", help="0 disables."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Discard an earlier run of this command and start over."
    ),
) -> None:
    """Supervised tuning of a LoRA adapter. Interrupted runs resume when the same command is run again."""
    import shutil

    from pydantic import ValidationError

    from tunelab import runs
    from tunelab.bundle import sha256_file
    from tunelab.configs import SFTConfig
    from tunelab.data.validation import DatasetValidationError
    from tunelab.models import ModelNotFoundError
    from tunelab.recipes.sft import TrainingInterrupted, train_sft

    try:
        config = SFTConfig(
            base_model=base,
            epochs=epochs,
            train_steps=train_steps,
            learning_rate_multiplier=learning_rate_multiplier,
            adapter_size=adapter_size,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            seed=seed,
            eval_every_steps=eval_every_steps,
            checkpoint_every_steps=checkpoint_every_steps,
            early_stopping_patience=early_stopping_patience or None,
        )
    except ValidationError as exc:
        _fail(_config_errors(exc))
    if not 1 <= len(name) <= 128:
        _fail("--name must be 1 to 128 characters")

    shas = [sha256_file(train), sha256_file(validation) if validation else None]
    rid = runs.run_id(name, config.model_dump(), shas)
    rdir = runs.run_dir(rid)
    if restart:
        shutil.rmtree(rdir, ignore_errors=True)
    if runs.is_complete(rdir):
        runs.record_tuned_model(name, rid)
        console.print(
            f"[green]already tuned[/]: {name} -> {rdir / 'adapter'} (use --restart to tune again)"
        )
        return
    resuming = (rdir / "checkpoints").exists()
    console.print(f"{'resuming' if resuming else 'starting'} run {rid} in {rdir}")

    stop = threading.Event()

    def on_sigint(signum, frame):  # first Ctrl-C: checkpoint and stop; second: stop now
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print(
            "[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)[/]"
        )

    previous = signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("loading", total=None, info="")

    def on_progress(p) -> None:
        info = []
        if p.train_loss is not None:
            info.append(f"loss {p.train_loss:.3f}")
        if p.eval_loss is not None:
            info.append(f"best eval {p.eval_loss:.3f}")
        if p.tokens_per_second:
            info.append(f"{p.tokens_per_second:.0f} tok/s")
        bar.update(
            task,
            description=p.phase,
            completed=p.step,
            total=p.total_steps or None,
            info="  ".join(info) or p.message,
        )

    try:
        with bar:
            result = train_sft(
                config, train, rdir, validation, on_progress=on_progress, should_stop=stop.is_set
            )
    except DatasetValidationError as exc:
        _fail(str(exc))
    except ModelNotFoundError as exc:
        _fail(str(exc))
    except TrainingInterrupted as exc:
        console.print(f"[yellow]{exc}[/]")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    runs.record_tuned_model(name, rid)
    console.print(f"[green]tuned model {name!r}[/] -> {result.adapter_dir}")
    console.print(
        f"steps {result.steps}"
        + (
            f", best eval loss {result.best_eval_loss:.4f} at step {result.best_step}"
            if result.best_step
            else ""
        )
        + (" (stopped early)" if result.stopped_early else "")
        + f", {result.usage['trained_tokens']} tokens trained in {result.usage['train_seconds']:.0f}s"
    )
    console.print(f'try it: tunelab predict --model {name} "..."')


def _config_errors(exc) -> str:
    lines = [
        f"  --{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
        for e in exc.errors()
    ]
    return "invalid tuning parameters:\n" + "\n".join(lines)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(1)
