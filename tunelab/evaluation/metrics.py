"""Metrics on lists of strings: predictions against references, one reference per example.

Every metric is kept as *per-example sufficient statistics* plus the function that turns their
column sums into the metric (:class:`Scored`): ``value = aggregate(stats.sum(axis=0))``. A mean
metric (exact match, token F1, ROUGE) has statistics ``[score, 1]``; a corpus metric keeps what
it needs to be recomputed (BLEU: n-gram matches and totals; macro F1: per-class TP/FP/FN). The
bootstrap (:mod:`tunelab.evaluation.bootstrap`) resamples the rows and re-aggregates, so corpus
metrics are recomputed on every resample rather than averaged per sentence.

Normalisation (:func:`normalize`), used by exact match and classification: strip, casefold
(Unicode lower-casing, ``"Straße"`` matches ``"STRASSE"``), and collapse every run of whitespace
to one space. Punctuation is kept: ``"billing."`` is not ``"billing"``.

Scales: every string metric is in [0, 1], BLEU included (sacrebleu's score / 100), so they share
one axis in tables and plots.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Aggregate = Callable[[np.ndarray], np.ndarray]
"""Maps summed statistics ``(..., k)`` to metric values ``(...)``."""


@dataclass(frozen=True)
class Scored:
    """One metric on one model's outputs, as resamplable per-example statistics."""

    stats: np.ndarray
    """(N, k) float64 sufficient statistics, one row per example."""
    aggregate: Aggregate

    @property
    def value(self) -> float:
        return float(self.aggregate(self.stats.sum(axis=0)))

    @property
    def per_example(self) -> np.ndarray | None:
        """(N,) per-example scores when the metric is a plain mean of them (``[score, 1]``)."""
        if self.aggregate is _ratio and np.all(self.stats[:, 1] == 1):
            return self.stats[:, 0]
        return None


def _ratio(s: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return s[..., 0] / s[..., 1]


def _exp_ratio(s: np.ndarray) -> np.ndarray:
    return np.exp(_ratio(s))


def mean_metric(scores: Sequence[float] | np.ndarray) -> Scored:
    """A metric that is the mean of per-example scores."""
    scores = np.asarray(scores, dtype=np.float64)
    return Scored(np.stack([scores, np.ones_like(scores)], axis=1), _ratio)


# ---------------------------------------------------------------- normalisation, exact match


def normalize(text: str) -> str:
    """Strip, casefold, and collapse whitespace (see the module docstring)."""
    return " ".join(text.casefold().split())


def exact_match_scores(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N,) 1.0 where the normalised prediction equals the normalised reference."""
    _check(predictions, references)
    return np.array(
        [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references, strict=True)]
    )


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    return float(exact_match_scores(predictions, references).mean())


# ---------------------------------------------------------------- classification


def discover_labels(references: Sequence[str]) -> list[str]:
    """The label set: the distinct normalised references, sorted."""
    return sorted({normalize(r) for r in references})


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int
    """Examples whose reference is this label."""


@dataclass(frozen=True)
class ClassificationMetrics:
    labels: list[str]
    accuracy: float
    macro_f1: float
    micro_f1: float
    per_class: dict[str, ClassScores]
    unknown_predictions: int
    """Predictions that are none of the labels (always wrong)."""


def confusion_stats(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """(N, 3, C) per-example TP, FP, FN indicators for each label.

    A prediction outside the label set is a false negative of the true label and a false
    positive of no label (as ``sklearn.metrics.f1_score(labels=...)`` counts it): it lowers
    recall, and micro F1 falls below accuracy only through such predictions.
    """
    _check(predictions, references)
    index = {label: c for c, label in enumerate(labels)}
    out = np.zeros((len(references), 3, len(labels)))
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        p_idx, r_idx = index.get(normalize(p)), index.get(normalize(r))
        if p_idx is not None and p_idx == r_idx:
            out[i, 0, p_idx] = 1
            continue
        if p_idx is not None:
            out[i, 1, p_idx] = 1
        if r_idx is not None:
            out[i, 2, r_idx] = 1
    return out


def f1_per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall); 0 when the
    label is neither predicted nor present, NaN-free."""
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def _macro_f1(s: np.ndarray) -> np.ndarray:
    """Mean F1 over the labels that occur (in references or predictions) in the sample: on the
    evaluated set that is every label; a bootstrap resample may miss a rare one."""
    c = s.shape[-1] // 3
    tp, fp, fn = s[..., :c], s[..., c : 2 * c], s[..., 2 * c :]
    present = (tp + fp + fn) > 0
    f1 = f1_per_class(tp, fp, fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (f1 * present).sum(-1) / present.sum(-1)


def _micro_f1(s: np.ndarray) -> np.ndarray:
    c = s.shape[-1] // 3
    tp, fp, fn = (s[..., k * c : (k + 1) * c].sum(-1) for k in range(3))
    return f1_per_class(tp, fp, fn)


def macro_f1_scored(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> Scored:
    stats = confusion_stats(predictions, references, labels)
    return Scored(stats.reshape(len(stats), -1), _macro_f1)


def micro_f1_scored(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> Scored:
    stats = confusion_stats(predictions, references, labels)
    return Scored(stats.reshape(len(stats), -1), _micro_f1)


def classification_metrics(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> ClassificationMetrics:
    """Accuracy, macro and micro F1, and precision/recall/F1 per label.

    ``labels`` defaults to those found in the references (:func:`discover_labels`).
    """
    labels = list(labels) if labels is not None else discover_labels(references)
    counts = confusion_stats(predictions, references, labels).sum(axis=0)  # (3, C)
    tp, fp, fn = counts
    f1 = f1_per_class(tp, fp, fn)
    per_class = {
        label: ClassScores(
            precision=float(tp[c] / (tp[c] + fp[c])) if tp[c] + fp[c] else 0.0,
            recall=float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else 0.0,
            f1=float(f1[c]),
            support=int(tp[c] + fn[c]),
        )
        for c, label in enumerate(labels)
    }
    known = set(labels)
    flat = counts.reshape(-1)
    return ClassificationMetrics(
        labels=labels,
        accuracy=exact_match(predictions, references),
        macro_f1=float(_macro_f1(flat)),
        micro_f1=float(_micro_f1(flat)),
        per_class=per_class,
        unknown_predictions=sum(normalize(p) not in known for p in predictions),
    )


# ---------------------------------------------------------------- BLEU (sacrebleu)


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    # Corpus BLEU with sacrebleu's defaults: 13a tokenisation, case-sensitive, exp smoothing.
    return BLEU()


def bleu_stats(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, 10) sacrebleu's per-sentence statistics: hypothesis and reference length, then
    matching and total n-grams for n = 1..4. Their sum determines corpus BLEU."""
    _check(predictions, references)
    # sacrebleu's own paired-bootstrap test (sacrebleu.significance) resamples these statistics
    # through the same two methods.
    stats = _bleu_metric()._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(stats, dtype=np.float64).reshape(len(predictions), -1)


def _bleu(s: np.ndarray) -> np.ndarray:
    metric = _bleu_metric()
    flat = s.reshape(-1, s.shape[-1])
    scores = [metric._compute_score_from_stats([int(x) for x in row]).score for row in flat]
    return np.asarray(scores).reshape(s.shape[:-1]) / 100.0


def bleu_scored(predictions: Sequence[str], references: Sequence[str]) -> Scored:
    return Scored(bleu_stats(predictions, references), _bleu)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002) as sacrebleu computes it, divided by 100."""
    return bleu_scored(predictions, references).value


# ---------------------------------------------------------------- ROUGE (rouge-score)

ROUGE_TYPES = {"rouge1": "rouge1", "rouge2": "rouge2", "rouge_l": "rougeL"}
"""Our metric names -> rouge-score's. ``rougeL`` is the longest common subsequence over the whole
text (not ``rougeLsum``'s per-sentence variant)."""


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """(N,) ROUGE-1/2/L F-measure per example (Lin 2004), computed by Google's rouge-score with
    Porter stemming. Its tokenizer keeps only ASCII letters and digits: text in other scripts
    scores 0 against anything."""
    _check(predictions, references)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=True)
    out = {name: np.zeros(len(references)) for name in ROUGE_TYPES}
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        scores = scorer.score(r, p)  # (target, prediction)
        for name, key in ROUGE_TYPES.items():
            out[name][i] = scores[key].fmeasure
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over the examples."""
    return {k: float(v.mean()) for k, v in rouge_scores(predictions, references).items()}


# ---------------------------------------------------------------- token F1 (SQuAD)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower-case, drop punctuation and the articles a/an/the,
    collapse whitespace (Rajpurkar et al. 2016, official evaluation script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1_scores(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N,) SQuAD token F1: the bag-of-tokens overlap of the normalised texts,
    F1 = 2 P R / (P + R) with P = common / |prediction|, R = common / |reference|; 1 when both
    are empty, 0 when only one is."""
    _check(predictions, references)
    out = np.zeros(len(references))
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        pt, rt = squad_normalize(p).split(), squad_normalize(r).split()
        if not pt or not rt:
            out[i] = float(pt == rt)
            continue
        common = sum((Counter(pt) & Counter(rt)).values())
        if common:
            precision, recall = common / len(pt), common / len(rt)
            out[i] = 2 * precision * recall / (precision + recall)
    return out


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    return float(token_f1_scores(predictions, references).mean())


# ---------------------------------------------------------------- loss and perplexity


def loss_scored(loss_sums: Sequence[float], token_counts: Sequence[int]) -> Scored:
    """Mean cross-entropy per reference token: sum of per-example summed losses over the total
    number of target tokens (longer references weigh more, as in training)."""
    return Scored(
        np.stack([np.asarray(loss_sums, float), np.asarray(token_counts, float)], 1), _ratio
    )


def perplexity_scored(loss_sums: Sequence[float], token_counts: Sequence[int]) -> Scored:
    """exp(mean cross-entropy per token); its interval is exp of the loss's."""
    return Scored(loss_scored(loss_sums, token_counts).stats, _exp_ratio)


def perplexity(loss: float) -> float:
    return math.exp(loss)


# ---------------------------------------------------------------- metrics by name


@dataclass(frozen=True)
class MetricInfo:
    title: str
    higher_is_better: bool = True
    bounded: bool = True
    """In [0, 1] (plotted on a shared axis)."""


METRICS: dict[str, MetricInfo] = {
    "exact_match": MetricInfo("exact match"),
    "accuracy": MetricInfo("accuracy"),
    "macro_f1": MetricInfo("macro F1"),
    "micro_f1": MetricInfo("micro F1"),
    "token_f1": MetricInfo("token F1"),
    "bleu": MetricInfo("BLEU"),
    "rouge1": MetricInfo("ROUGE-1"),
    "rouge2": MetricInfo("ROUGE-2"),
    "rouge_l": MetricInfo("ROUGE-L"),
    "loss": MetricInfo("loss", higher_is_better=False, bounded=False),
    "perplexity": MetricInfo("perplexity", higher_is_better=False, bounded=False),
}


def score_strings(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> dict[str, Scored]:
    """The named string metrics (not loss/perplexity, which need the model) as :class:`Scored`."""
    _check(predictions, references)
    out: dict[str, Scored] = {}
    rouge_cache: dict[str, np.ndarray] | None = None
    for name in names:
        if name in ("exact_match", "accuracy"):
            out[name] = mean_metric(exact_match_scores(predictions, references))
        elif name in ("macro_f1", "micro_f1"):
            labels = list(labels) if labels is not None else discover_labels(references)
            make = macro_f1_scored if name == "macro_f1" else micro_f1_scored
            out[name] = make(predictions, references, labels)
        elif name == "token_f1":
            out[name] = mean_metric(token_f1_scores(predictions, references))
        elif name == "bleu":
            out[name] = bleu_scored(predictions, references)
        elif name in ROUGE_TYPES:
            rouge_cache = rouge_cache or rouge_scores(predictions, references)
            out[name] = mean_metric(rouge_cache[name])
        else:
            raise ValueError(f"unknown string metric {name!r}")
    return out


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: one each expected"
        )
