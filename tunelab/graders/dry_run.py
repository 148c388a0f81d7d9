"""A grader's dry run: what rewards it gives before any training is paid for.

It scores (1) each line's reference answer, when the lines carry one (``reference_field``): an
ideal answer should pass, so a grader that fails them is wrong; and (2) answers the base model
samples for some prompts, as training's first rollouts would be: if they all score the same,
GRPO's group advantages are all zero and training has nothing to learn from.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.graders.build import ModelLocator, build_grader

logger = logging.getLogger(__name__)


def distribution(scores: np.ndarray, pass_threshold: float, bins: int = 10) -> dict[str, Any]:
    """Summary of scores: count, mean, std, quantiles, pass rate, histogram over [0, 1] (or
    the scores' range when they leave it)."""
    if not len(scores):
        return {"count": 0}
    low, high = min(0.0, float(scores.min())), max(1.0, float(scores.max()))
    counts, edges = np.histogram(scores, bins=bins, range=(low, high))
    q = np.quantile(scores, [0, 0.25, 0.5, 0.75, 1])
    return {
        "count": int(len(scores)),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "max": float(q[4]),
        "pass_rate": float((scores >= pass_threshold).mean()),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def dry_run(
    spec,
    data: Path,
    *,
    base_model: str,
    prompts: int = 8,
    samples_per_prompt: int = 4,
    reference_field: str = "reference",
    pass_threshold: float = 1.0,
    max_output_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    locate_model: ModelLocator | None = None,
) -> dict[str, Any]:
    """Scores of the references and of ``samples_per_prompt`` base-model answers to each of
    the first ``prompts`` prompts (0: references only). Raises DatasetValidationError on a bad
    line, as training would."""
    import torch

    from tunelab.data.rft import load_rft
    from tunelab.graders.templates import MissingField, lookup
    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
    from tunelab.serving.generation import GenerationParams
    from tunelab.serving.runner import ModelRunner, sample_answers

    base = resolve_model(base_model)
    tokenizer = load_tokenizer(base.path)
    encoded, items, report = load_rft(data, tokenizer, spec)
    grader = build_grader(spec, locate_model=locate_model)
    out: dict[str, Any] = {"lines": len(items), "pass_threshold": pass_threshold}

    refs = []
    for item in items:
        try:
            refs.append((str(lookup(item, reference_field)), item))
        except MissingField:
            continue
    if refs:
        graded = grader.grade([r for r, _ in refs], [i for _, i in refs])
        out["references"] = distribution(graded.scores, pass_threshold) | {
            "field": reference_field,
            "failures": dict(graded.failures),
            "parts": {k: float(v.mean()) for k, v in graded.parts.items()},
        }
    else:
        out["references"] = {"count": 0, "field": reference_field}

    chosen = encoded[:prompts]
    if chosen:
        model = load_causal_lm(base.path)
        model.eval()
        params = GenerationParams.model_construct(  # unchecked: the arguments are bounded
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_output_tokens=max_output_tokens,
            seed=seed,
        )
        with torch.no_grad():
            answers, _ = sample_answers(
                ModelRunner(model, tokenizer),
                [p.input_ids for p in chosen],
                samples_per_prompt,
                params,
            )
        texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        sample_items = [items[i] for i in range(len(chosen)) for _ in range(samples_per_prompt)]
        graded = grader.grade(texts, sample_items)
        groups = graded.scores.reshape(len(chosen), samples_per_prompt)
        out["base_samples"] = distribution(graded.scores, pass_threshold) | {
            "base_model": base.ref,
            "prompts": len(chosen),
            "samples_per_prompt": samples_per_prompt,
            "failures": dict(graded.failures),
            "parts": {k: float(v.mean()) for k, v in graded.parts.items()},
            # Groups whose answers all score alike give GRPO nothing to learn from.
            "flat_groups": int((groups.max(axis=1) == groups.min(axis=1)).sum()),
            "examples": [
                {"answer": t, "score": float(s)}
                for t, s in zip(texts[:6], graded.scores, strict=False)
            ],
        }
    failures = Counter(out["references"].get("failures", {}))
    failures.update(out.get("base_samples", {}).get("failures", {}))
    out["grader_failures"] = dict(failures)
    return out
