"""``tunelab graders test``: a grader's dry run, before paying for training.

(``tunelab tune rft`` is generated from RFTConfig like every ``tune`` command; its ``--grader``
takes the grader's JSON file.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tunelab.cli.tune import _services, console, fail
from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.configs.rft import RFTConfig

graders_app = typer.Typer(help="Graders for reinforcement fine-tuning.", no_args_is_help=True)


def _help(name: str) -> str:
    return RFTConfig.model_fields[name].description or ""


def _default(name: str):
    return RFTConfig.model_fields[name].default


def read_grader_file(path: Path) -> dict[str, Any]:
    """The grader JSON of ``path``, or exit with where it is not JSON."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        fail(f"{path}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: cannot read: {exc}")
    if not isinstance(obj, dict):
        fail(f"{path}: a grader is a JSON object with a 'type'")
    return obj


@graders_app.command("test")
def test_grader(
    grader: Path = typer.Argument(..., exists=True, dir_okay=False, help="The grader (JSON)."),
    data: Path = typer.Option(
        ..., "--data", exists=True, dir_okay=False, help="Prompts with the grader's fields."
    ),
    base: str = typer.Option(DEFAULT_BASE_MODEL, "--base", help="Base model that samples."),
    prompts: int = typer.Option(
        8, "--prompts", min=0, max=1000, help="Prompts the base model answers (0: none)."
    ),
    samples_per_prompt: int = typer.Option(4, "--samples-per-prompt", min=1, max=64),
    reference_field: str = typer.Option(
        "reference", "--reference-field", help="The lines' field holding an ideal answer."
    ),
    pass_threshold: float = typer.Option(1.0, "--pass-threshold"),
    max_output_tokens: int = typer.Option(64, "--max-output-tokens", min=1, max=4096),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, max=2.0),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Dry run: score the references and some base-model samples; print the distribution."""
    from pydantic import ValidationError

    from tunelab.data.validation import DatasetValidationError
    from tunelab.graders.dry_run import dry_run
    from tunelab.graders.sandbox import GraderUnavailable
    from tunelab.graders.score_model import registry_locator
    from tunelab.graders.spec import describe_errors, parse_grader

    try:
        spec = parse_grader(read_grader_file(grader))
    except ValidationError as exc:
        fail(f"{grader}: invalid grader:\n" + "\n".join(f"  {x}" for x in describe_errors(exc)))
    try:
        result = dry_run(
            spec,
            data,
            base_model=base,
            prompts=prompts,
            samples_per_prompt=samples_per_prompt,
            reference_field=reference_field,
            pass_threshold=pass_threshold,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            locate_model=registry_locator(_services(), allow_folder=True),
        )
    except DatasetValidationError as exc:
        fail(str(exc))
    except (GraderUnavailable, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"{result['lines']} lines; an answer passes at reward >= {pass_threshold:g}")
    refs = result["references"]
    if refs["count"]:
        _print_distribution(f"references (field {refs['field']!r})", refs)
        if refs["pass_rate"] < 1:
            console.print(
                "  [yellow]not every reference passes: is the grader (or the threshold) right?[/]"
            )
    else:
        console.print(f"references: no line has a {refs['field']!r} field (--reference-field)")
    samples = result.get("base_samples")
    if samples:
        _print_distribution(
            f"base model {samples['base_model']}: {samples['samples_per_prompt']} samples x "
            f"{samples['prompts']} prompts",
            samples,
        )
        console.print(
            f"  groups whose answers all score alike (nothing to learn): "
            f"{samples['flat_groups']} of {samples['prompts']}"
        )
        for example in samples["examples"][:3]:
            console.print(f"  {example['score']:.3f}  {example['answer'][:100]!r}", highlight=False)
    if result["grader_failures"]:
        console.print(f"[yellow]grader failures (scored 0):[/] {result['grader_failures']}")


def _print_distribution(title: str, d: dict[str, Any]) -> None:
    console.print(
        f"{title}: n={d['count']} mean {d['mean']:.3f} (std {d['std']:.3f}), "
        f"min {d['min']:.3f} median {d['median']:.3f} max {d['max']:.3f}, "
        f"pass rate {d['pass_rate']:.1%}",
        highlight=False,
    )
    if d.get("parts"):
        console.print(
            "  mean per grader: " + ", ".join(f"{k} {v:.3f}" for k, v in d["parts"].items())
        )
    edges, counts = d["histogram"]["edges"], d["histogram"]["counts"]
    top = max(counts) or 1
    for lo, hi, c in zip(edges, edges[1:], counts, strict=False):
        console.print(
            f"  [{lo:5.2f}, {hi:5.2f}) {'#' * round(30 * c / top):<30} {c}", highlight=False
        )
