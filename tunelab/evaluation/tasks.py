"""Evaluation tasks: which metrics each reports, and inferring the task from the data.

Inference runs on the whole file, before any sampling. The metrics follow Vertex AI's model evaluation: classification reports F1 and accuracy,
summarization ROUGE-L, question answering exact match, and open generation BLEU and ROUGE-L.
Every task also reports exact match, and the loss and perplexity of the references.

Inference looks only at the references and the prompts, never at a model's outputs, so the same
file always gets the same task (:func:`infer_task`, rules in order):

1. **classification**: the references are short labels (at most 3 words on average, 5 at most)
   taking few distinct values: at most 20, each seen twice on average, or at most one per 5
   examples; and at least 2 of them.
2. **qa**: most prompts mention a "question" or "context", and the references are short (at most
   10 words on average).
3. **summarization**: the references are at least 8 words on average and at most half as long
   as the prompts.
4. **generation** otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tunelab.evaluation.metrics import normalize

TaskName = Literal["classification", "summarization", "qa", "generation"]

_MODEL_METRICS = ("loss", "perplexity")


@dataclass(frozen=True)
class TaskSpec:
    name: TaskName
    metrics: tuple[str, ...]
    """Reported metrics, headline first."""
    example_metric: str
    """The per-example score that ranks the examples where models disagree."""

    @property
    def headline(self) -> str:
        return self.metrics[0]

    @property
    def string_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m not in _MODEL_METRICS)


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        "classification",
        ("macro_f1", "accuracy", "micro_f1", "exact_match", "loss", "perplexity"),
        example_metric="exact_match",
    ),
    "qa": TaskSpec(
        "qa",
        ("exact_match", "token_f1", "rouge_l", "loss", "perplexity"),
        example_metric="token_f1",
    ),
    "summarization": TaskSpec(
        "summarization",
        ("rouge_l", "rouge1", "rouge2", "bleu", "exact_match", "loss", "perplexity"),
        example_metric="rouge_l",
    ),
    "generation": TaskSpec(
        "generation",
        ("rouge_l", "bleu", "rouge1", "rouge2", "exact_match", "loss", "perplexity"),
        example_metric="rouge_l",
    ),
}

MAX_LABELS = 20
MAX_LABEL_WORDS_MEAN = 3.0
MAX_LABEL_WORDS = 5
MAX_ANSWER_WORDS_MEAN = 10.0
MIN_SUMMARY_WORDS_MEAN = 8.0
MAX_SUMMARY_RATIO = 0.5


def infer_task(prompts: Sequence[str], references: Sequence[str]) -> tuple[TaskName, str]:
    """The task of a dataset and a one-line reason, from its prompts and reference outputs."""
    if not references:
        return "generation", "no examples"
    n = len(references)
    ref_words = [len(r.split()) for r in references]
    mean_ref = sum(ref_words) / n
    mean_prompt = sum(len(p.split()) for p in prompts) / max(1, len(prompts))
    counts = Counter(normalize(r) for r in references)
    distinct = len(counts)

    short = mean_ref <= MAX_LABEL_WORDS_MEAN and max(ref_words) <= MAX_LABEL_WORDS
    few = (distinct <= MAX_LABELS and 2 * distinct <= n) or 5 * distinct <= n
    if short and few and distinct >= 2:
        return "classification", (
            f"the {n} references take {distinct} distinct values "
            f"({_shown(counts)}), {mean_ref:.1f} words on average"
        )

    mention = sum(("question" in p.casefold() or "context" in p.casefold()) for p in prompts)
    if mention > len(prompts) / 2 and mean_ref <= MAX_ANSWER_WORDS_MEAN:
        return "qa", (
            f"{mention} of {len(prompts)} prompts mention a question or context and the "
            f"references are short ({mean_ref:.1f} words on average)"
        )

    if mean_ref >= MIN_SUMMARY_WORDS_MEAN and mean_ref <= MAX_SUMMARY_RATIO * mean_prompt:
        return "summarization", (
            f"the references ({mean_ref:.0f} words on average) are "
            f"{mean_ref / mean_prompt:.0%} of the prompts' length ({mean_prompt:.0f} words)"
        )

    return "generation", (
        f"the references are {distinct} distinct texts of {mean_ref:.1f} words on average, "
        f"neither labels, short answers nor summaries"
    )


def _shown(counts: Counter, limit: int = 6) -> str:
    labels = [label for label, _ in counts.most_common(limit)]
    more = len(counts) - len(labels)
    return ", ".join(labels) + (f", ... {more} more" if more else "")
