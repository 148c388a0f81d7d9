"""A job's evaluate step for the LoRA methods: ``tunelab eval`` on the held-out data, run on the
base model, the tuned adapter and every kept checkpoint side by side, so a user picks a
checkpoint on held-out numbers (task metrics with bootstrap intervals, loss and perplexity).

The summary stored on the model version stays base against tuned; each checkpoint's metrics
go in ``checkpoints`` ([{step, metrics}]), which tunelab.registry.checkpoints lists. A
checkpoint holding the tuned adapter's very weights (the best step, or the last) is not
generated from twice: it shares the tuned column's numbers. DPO's held-out pairs are evaluated
as prompts with their preferred answer as the reference (:func:`preferred_answers`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.bundle import read_manifest
from tunelab.jobs import steps
from tunelab.jobs.pipeline import StepContext
from tunelab.jobs.progress import rate_eta

EVAL_MAX_EXAMPLES = 200
"""A validation set larger than this is evaluated on a seeded sample (generation is the slow part)."""


def _weights_sha256(folder: Path) -> str | None:
    return read_manifest(folder).get("files", {}).get("adapter_model.safetensors")


def evaluate_with_checkpoints(
    ctx: StepContext, dataset: Path, start: float = 0.9, share: float = 0.06
) -> dict[str, Any]:
    """Evaluate base, tuned and the kept checkpoints on the supervised file ``dataset``; the
    report is stored as an artifact. Progress from ``start`` over ``share`` of the job's bar."""
    from tunelab.evaluation.report import save_report
    from tunelab.evaluation.runner import evaluate_models

    trained = ctx.outputs["train"]
    adapter_dir = ctx.store.local_path(trained["adapter"]["uri"])
    final_weights = _weights_sha256(adapter_dir)
    checkpoints = [
        (c["step"], ctx.store.local_path(c["adapter"]["uri"]))
        for c in trained.get("checkpoints", [])
    ]
    separate = [(s, d) for s, d in checkpoints if _weights_sha256(d) != final_weights]
    base, tuned = ctx.job.base_model, str(adapter_dir)
    refs = [base, tuned, *(str(d) for _, d in separate)]

    began = time.monotonic()

    def on_progress(p) -> None:
        ctx.check_stop()
        done = (p.model_index + p.done / max(1, p.total)) / max(1, p.models)
        what = ("base", "tuned")[p.model_index] if p.model_index < 2 else "checkpoint"
        ctx.report(
            f"evaluating {what} model",
            start + share * done,
            rate_eta(began, done, time.monotonic()),
        )

    report = evaluate_models(
        refs,
        dataset,
        max_examples=EVAL_MAX_EXAMPLES,
        progress=on_progress,
        device=steps.job_device(ctx),
    )
    folder = ctx.workdir / "evaluation"
    save_report(report, folder)
    summary = report.to_dict()
    by_ref = {m["ref"]: m["metrics"] for m in summary["models"]}
    per_checkpoint = [
        {"step": s, "metrics": by_ref.get(str(d), by_ref[tuned])} for s, d in checkpoints
    ]
    # Name the two columns by role, not by the (long, local) paths they were loaded from; the
    # checkpoints' columns are in per_checkpoint and the stored report.
    summary["models"] = summary["models"][:2]
    summary["models"][0]["ref"], summary["models"][1]["ref"] = "base", "tuned"
    summary["differences"] = {"tuned": summary["differences"][tuned]}
    summary["baseline"] = "base"
    for row in summary["disagreements"]:  # keyed by local paths: base and tuned, by role
        for key in ("outputs", "scores"):
            row[key] = {
                role: row[key][ref]
                for ref, role in ((base, "base"), (tuned, "tuned"))
                if ref in row[key]
            }
    return {
        "report": steps.store_dir(ctx, folder, "evaluation"),
        "evaluation": summary,
        "checkpoints": per_checkpoint,
        "headline_metric": summary["headline_metric"],
    }


def preferred_answers(pairs: Path, out: Path) -> Path:
    """The preference pairs of ``pairs`` as a supervised chat file: each prompt with its
    preferred answer as the model's turn, for ``tunelab eval``'s metrics (how close the tuned
    model's greedy answer comes to the preferred one, and the preferred answer's loss)."""
    from tunelab.data.formats import parse_line
    from tunelab.data.preference import messages_of
    from tunelab.data.reader import iter_lines
    from tunelab.training.atomic import write_bytes

    lines = []
    with open(pairs, "rb") as stream:
        for number, text in iter_lines(stream):
            parsed = parse_line(text, number, "preference") if isinstance(text, str) else None
            if parsed is None or isinstance(parsed, list):
                continue  # the validate step already refused a file with bad lines
            answer = {"role": "assistant", "content": parsed.chosen}
            lines.append(json.dumps({"messages": [*messages_of(parsed.prompt), answer]}))
    write_bytes(out, ("\n".join(lines) + "\n").encode())
    return out
