"""Evaluating one or more models on the same data, side by side: the function behind
``tunelab eval`` (and, later, a tuning job's evaluate step).

For every model, in turn (one in memory at a time):

1. generate a response to every prompt (batched, greedy unless asked otherwise);
2. score the responses against the references with the task's metrics
   (:mod:`tunelab.evaluation.metrics`);
3. compute the loss of the reference outputs under the model (cross-entropy per model-turn token,
   as a validation step computes it: :func:`tunelab.training.eval_loss.evaluate`, one example at
   a time so that each example's loss can be resampled) and perplexity = exp(loss).

Then every metric gets a paired-bootstrap interval per model and for each model's difference
from the first (:mod:`tunelab.evaluation.bootstrap`), and the examples on which the models'
per-example scores differ most are kept for the report.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunelab import __version__
from tunelab.data.template import encode
from tunelab.data.validation import DEFAULT_MAX_SEQ_LENGTH
from tunelab.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    paired_bootstrap,
)
from tunelab.evaluation.dataset import EvalExample, read_eval_set
from tunelab.evaluation.generate import generate_batched
from tunelab.evaluation.metrics import (
    Scored,
    classification_metrics,
    discover_labels,
    loss_scored,
    perplexity_scored,
    score_strings,
)
from tunelab.evaluation.model_refs import (
    ModelRef,
    load_model_ref,
    load_ref_tokenizer,
    resolve_model_ref,
)
from tunelab.evaluation.tasks import TASKS, TaskName, TaskSpec, infer_task
from tunelab.serving.generation import GenerationParams, LoadedModel
from tunelab.training.eval_loss import evaluate

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_EXAMPLES = 500
"""Larger sets are sampled (fixed seed) unless every example is asked for: Vertex recommends
evaluation sets of a few hundred examples, and generation on CPU costs seconds per example."""
MAX_AUTO_OUTPUT_TOKENS = 1024
FEW_EXAMPLES = 30


@dataclass(frozen=True)
class EvalProgress:
    model: str
    model_index: int
    """0-based position of the model in the comparison."""
    models: int
    phase: Literal["loading", "generating", "scoring"]
    done: int
    total: int


ProgressCallback = Callable[[EvalProgress], None]


@dataclass
class ModelResult:
    ref: str
    """As given (the column name in tables)."""
    kind: str
    """``tuned``, ``adapter`` or ``base``."""
    path: str
    """The adapter bundle or base model folder that was evaluated."""
    metrics: dict[str, Interval]
    per_class: dict[str, dict[str, float]] | None = None
    """Classification: precision, recall, f1, support per label."""
    unknown_predictions: int | None = None
    """Classification: responses that are none of the labels."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "path": self.path,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "per_class": self.per_class,
            "unknown_predictions": self.unknown_predictions,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ExampleResult:
    line: int
    prompt: str
    reference: str
    outputs: dict[str, str]
    """Model ref -> response."""
    scores: dict[str, float]
    """Model ref -> the task's per-example score."""

    @property
    def spread(self) -> float:
        return max(self.scores.values()) - min(self.scores.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "prompt": self.prompt,
            "reference": self.reference,
            "outputs": self.outputs,
            "scores": self.scores,
        }


@dataclass
class EvalReport:
    task: TaskName
    task_reason: str
    task_inferred: bool
    dataset: str
    dataset_sha256: str
    n_examples: int
    n_available: int
    seed: int
    params: dict[str, Any]
    metrics: list[str]
    """Reported metrics, the task's headline metric first."""
    models: list[ModelResult]
    differences: dict[str, dict[str, Interval]]
    """Model ref -> metric -> (model - first model) with its interval; all but the first model."""
    example_metric: str
    disagreements: list[ExampleResult]
    """The examples whose per-example scores differ most between models, most first."""
    labels: list[str] | None = None
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    warnings: list[str] = field(default_factory=list)
    examples: list[ExampleResult] = field(default_factory=list, repr=False)
    """Every evaluated example with every model's response (saved as predictions.jsonl)."""
    created_at: str = ""

    @property
    def sampled(self) -> bool:
        return self.n_examples < self.n_available

    @property
    def headline(self) -> str:
        return self.metrics[0]

    @property
    def baseline(self) -> str:
        return self.models[0].ref

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-example predictions (see :attr:`examples`)."""
        return {
            "task": self.task,
            "task_reason": self.task_reason,
            "task_inferred": self.task_inferred,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "n_examples": self.n_examples,
            "n_available": self.n_available,
            "sampled": self.sampled,
            "seed": self.seed,
            "generation_params": self.params,
            "metrics": self.metrics,
            "headline_metric": self.headline,
            "bootstrap": {"resamples": self.resamples, "confidence": self.confidence},
            "models": [m.to_dict() for m in self.models],
            "baseline": self.baseline,
            "differences": {
                ref: {k: {**v.to_dict(), "excludes_zero": v.excludes_zero} for k, v in d.items()}
                for ref, d in self.differences.items()
            },
            "labels": self.labels,
            "example_metric": self.example_metric,
            "disagreements": [d.to_dict() for d in self.disagreements],
            "warnings": self.warnings,
            "created_at": self.created_at,
            "tunelab_version": __version__,
        }


def evaluate_models(
    model_refs: Sequence[str],
    dataset_path: str | Path,
    *,
    task: TaskName | None = None,
    params: GenerationParams | None = None,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
    batch_size: int = 8,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    top_k: int = 10,
    progress: ProgressCallback | None = None,
    device: torch.device | str = "cpu",
) -> EvalReport:
    """Evaluate each model on the same examples of ``dataset_path``; the first is the baseline.

    - ``model_refs``: tuned model names, adapter folders or base models
      (:func:`tunelab.evaluation.model_refs.resolve_model_ref`), all different.
    - ``task``: inferred from the data when None (:func:`tunelab.evaluation.tasks.infer_task`).
    - ``params``: greedy decoding by default. Unless ``max_output_tokens`` is set explicitly, it
      is sized from the references: twice the longest reference in tokens, plus 16.
    - ``max_examples``: a larger set is sampled with ``seed``; None evaluates every example.
    - ``seed`` also fixes the bootstrap resamples.
    - ``device``: where each model is loaded (tunelab.models.device resolves a job's
      ``accelerator`` to one).

    Raises :class:`tunelab.data.validation.DatasetValidationError` for a bad dataset and
    :class:`tunelab.models.ModelNotFoundError` for an unknown model, before generating anything.
    """
    if not model_refs:
        raise ValueError("no model to evaluate")
    if len(set(model_refs)) != len(model_refs):
        raise ValueError(f"a model is listed twice: {list(model_refs)}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    refs = [resolve_model_ref(r) for r in model_refs]
    tokenizer = load_ref_tokenizer(refs[0])
    data = read_eval_set(
        dataset_path, tokenizer, max_examples=max_examples, seed=seed, max_seq_length=max_seq_length
    )
    examples = data.examples
    references = [e.reference for e in examples]

    population = data.population  # the whole file, sampled or not
    if task is None:
        task, reason = infer_task(
            [e.prompt_text for e in population], [e.reference for e in population]
        )
        inferred = True
    else:
        reason, inferred = "given", False
    spec = TASKS[task]
    labels = (
        discover_labels([e.reference for e in population]) if task == "classification" else None
    )
    params = _generation_params(params, tokenizer, references)
    log.info(
        "evaluating %d model(s) on %d of %d examples; task %s (%s); %s",
        len(refs),
        len(examples),
        data.available,
        task,
        reason,
        params.model_dump(),
    )

    scored: list[dict[str, Scored]] = []
    outputs: list[list[str]] = []
    results: list[ModelResult] = []
    for index, ref in enumerate(refs):

        def report(phase, done, total, ref=ref, index=index):
            if progress is not None:
                progress(EvalProgress(ref.ref, index, len(refs), phase, done, total))

        outs, metrics, result = _run_model(
            ref, examples, spec, labels, params, batch_size, max_seq_length, report, device
        )
        scored.append(metrics)
        outputs.append(outs)
        results.append(result)

    differences: dict[str, dict[str, Interval]] = {r.ref: {} for r in results[1:]}
    for name in spec.metrics:
        paired = paired_bootstrap(
            [s[name] for s in scored], resamples=resamples, confidence=confidence, seed=seed
        )
        for m, result in enumerate(results):
            result.metrics[name] = paired.intervals[m]
            if m:
                differences[result.ref][name] = paired.differences[m]  # type: ignore[assignment]

    per_example = [s[spec.example_metric].per_example for s in scored]
    assert all(p is not None for p in per_example), "the example metric must be a mean metric"
    rows = [
        ExampleResult(
            line=e.line,
            prompt=e.prompt_text,
            reference=e.reference,
            outputs={r.ref: outputs[m][i] for m, r in enumerate(results)},
            scores={r.ref: float(per_example[m][i]) for m, r in enumerate(results)},  # type: ignore[index]
        )
        for i, e in enumerate(examples)
    ]
    return EvalReport(
        task=task,
        task_reason=reason,
        task_inferred=inferred,
        dataset=str(dataset_path),
        dataset_sha256=data.validation.sha256,
        n_examples=len(examples),
        n_available=data.available,
        seed=seed,
        params=params.model_dump(),
        metrics=list(spec.metrics),
        models=results,
        differences=differences,
        example_metric=spec.example_metric,
        disagreements=top_disagreements(rows, top_k),
        labels=labels,
        resamples=resamples,
        confidence=confidence,
        warnings=_warnings(data, len(examples)),
        examples=rows,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _run_model(
    ref: ModelRef,
    examples: Sequence[EvalExample],
    spec: TaskSpec,
    labels: list[str] | None,
    params: GenerationParams,
    batch_size: int,
    max_seq_length: int,
    report: Callable[[str, int, int], None],
    device: torch.device | str = "cpu",
) -> tuple[list[str], dict[str, Scored], ModelResult]:
    """One model: load, generate, score the outputs and the references' loss, unload."""
    started = time.perf_counter()
    report("loading", 0, len(examples))
    loaded = load_model_ref(ref, device)
    outs = generate_batched(
        loaded,
        [e.prompt for e in examples],
        params,
        batch_size=batch_size,
        progress=lambda done, total: report("generating", done, total),
    )
    loss_sums, counts = reference_losses(
        loaded,
        examples,
        max_seq_length,
        progress=lambda done, total: report("scoring", done, total),
    )
    del loaded
    gc.collect()  # one model in memory at a time

    references = [e.reference for e in examples]
    metrics = score_strings(spec.string_metrics, outs, references, labels)
    metrics["loss"] = loss_scored(loss_sums, counts)
    metrics["perplexity"] = perplexity_scored(loss_sums, counts)
    result = ModelResult(ref=ref.ref, kind=ref.kind, path=str(ref.path), metrics={})
    if labels is not None:
        cls = classification_metrics(outs, references, labels)
        result.per_class = {k: asdict(v) for k, v in cls.per_class.items()}
        result.unknown_predictions = cls.unknown_predictions
    result.seconds = time.perf_counter() - started
    log.info("%s: %s in %.0fs", ref.ref, _short(metrics, spec.headline), result.seconds)
    return outs, metrics, result


def reference_losses(
    loaded: LoadedModel,
    examples: Sequence[EvalExample],
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Per example: the summed cross-entropy of its model-turn tokens, and their number.

    The examples are encoded with the model's own tokenizer and chat template, exactly as
    training encodes them (earlier model turns of a multi-turn example count too).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums: list[float] = []
    counts: list[int] = []
    for i, e in enumerate(examples):
        encoded = encode(tokenizer, e.example, max_seq_length)
        targets = int(encoded.loss_mask[1:].sum())  # a position predicts the next token
        if targets:
            loss = evaluate(model, decoder, head, [encoded], 1, pad_id)["eval_loss"]
            sums.append(loss * targets)
        else:
            sums.append(0.0)
        counts.append(targets)
        if progress is not None and ((i + 1) % 16 == 0 or i + 1 == len(examples)):
            progress(i + 1, len(examples))
    return sums, counts


def top_disagreements(rows: Sequence[ExampleResult], k: int) -> list[ExampleResult]:
    """The ``k`` examples with the largest spread between the models' per-example scores
    (ties: file order); none when a single model is evaluated or all agree."""
    ranked = sorted(
        (r for r in rows if len(r.scores) > 1 and r.spread > 0), key=lambda r: -r.spread
    )
    return ranked[:k]


def _generation_params(
    params: GenerationParams | None, tokenizer, references: Sequence[str]
) -> GenerationParams:
    params = params or GenerationParams(temperature=0)
    if "max_output_tokens" in params.model_fields_set:
        return params
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    auto = min(MAX_AUTO_OUTPUT_TOKENS, 2 * longest + 16)
    return params.model_copy(update={"max_output_tokens": auto})


def _warnings(data, n: int) -> list[str]:
    out = []
    for reason, count in data.validation.dropped.items():
        out.append(f"{count} example(s) left out: {reason}")
    if data.validation.truncated:
        out.append(
            f"{data.validation.truncated} example(s) longer than max_seq_length: their loss is "
            "computed on the truncated text"
        )
    if n < FEW_EXAMPLES:
        out.append(f"only {n} examples: the intervals are wide")
    return out


def _short(metrics: dict[str, Scored], name: str) -> str:
    return f"{name} {metrics[name].value:.4f}"
