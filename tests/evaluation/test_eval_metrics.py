"""Each metric against values worked out by hand, or computed by the reference library directly."""

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.evaluation.metrics import (
    bleu,
    bleu_scored,
    classification_metrics,
    discover_labels,
    exact_match,
    exact_match_scores,
    loss_scored,
    macro_f1_scored,
    micro_f1_scored,
    normalize,
    perplexity_scored,
    rouge,
    score_strings,
    squad_normalize,
    token_f1,
    token_f1_scores,
)


def test_normalize_strips_casefolds_and_collapses_whitespace():
    assert normalize("  Billing\t Team \n") == "billing team"
    assert normalize("STRASSE") == normalize("Straße")
    assert normalize("billing.") != normalize("billing")  # punctuation is kept


def test_exact_match_on_normalised_strings():
    preds = ["Billing", " billing ", "billing.", "BILLING   now"]
    refs = ["billing", "billing", "billing", "billing now"]
    assert exact_match_scores(preds, refs).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert exact_match(preds, refs) == 0.75
    with pytest.raises(ValueError, match="one each"):
        exact_match(["a"], ["a", "b"])


def test_label_discovery_from_references():
    refs = ["Billing", "billing ", "Technical", "account", "TECHNICAL"]
    assert discover_labels(refs) == ["account", "billing", "technical"]


# refs a a a b b c; preds a a b b c x ("x" is no label)
CLS_REFS = ["a", "a", "a", "b", "b", "c"]
CLS_PREDS = ["a", "A", "b", "b", "c", "x"]


def test_classification_metrics_by_hand():
    m = classification_metrics(CLS_PREDS, CLS_REFS)
    assert m.labels == ["a", "b", "c"]
    # a: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 4/5
    # b: TP 1, FP 1 (line 3), FN 1 (line 5) -> 1/2, 1/2, 1/2
    # c: TP 0, FP 1 (line 5), FN 1 (line 6, predicted "x") -> 0
    a, b, c = (m.per_class[k] for k in "abc")
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1, 2 / 3, 0.8, 3))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 1)
    assert m.accuracy == 0.5
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 0) / 3)
    # micro: TP 3, FP 2, FN 3 ("x" is a miss of "c" but a false positive of no label)
    assert m.micro_f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 3))
    assert m.unknown_predictions == 1


def test_classification_statistics_recompute_on_a_resample():
    """The bootstrap form (summed per-example counts) gives the same F1 as recomputing from the
    resampled lists: macro F1 is recomputed per resample, not averaged per example."""
    labels = discover_labels(CLS_REFS)
    macro = macro_f1_scored(CLS_PREDS, CLS_REFS, labels)
    micro = micro_f1_scored(CLS_PREDS, CLS_REFS, labels)
    full = classification_metrics(CLS_PREDS, CLS_REFS)
    assert macro.value == pytest.approx(full.macro_f1)
    assert micro.value == pytest.approx(full.micro_f1)
    idx = [0, 0, 3, 4, 4, 5]  # "b" twice as often, one "a" and "c" kept
    weights = np.bincount(idx, minlength=6).astype(float)
    again = classification_metrics([CLS_PREDS[i] for i in idx], [CLS_REFS[i] for i in idx], labels)
    assert float(macro.aggregate(weights @ macro.stats)) == pytest.approx(again.macro_f1)
    assert float(micro.aggregate(weights @ micro.stats)) == pytest.approx(again.micro_f1)


def test_macro_f1_averages_over_labels_present_in_the_sample():
    """A resample without any "c" (neither in references nor predictions) averages a and b."""
    labels = ["a", "b", "c"]
    scored = macro_f1_scored(["a", "b"], ["a", "a"], labels)
    # a: TP 1, FN 1 -> F1 2/3; b: FP 1 -> 0; c absent
    assert scored.value == pytest.approx((2 / 3 + 0) / 2)


def test_token_f1_squad_style_by_hand():
    assert squad_normalize("The Cat, sat!") == "cat sat"
    # tokens: [cat, sat, on, mat] vs [cat, on, mat]: 3 common, P 3/4, R 1
    assert token_f1(["The cat sat on the mat."], ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert token_f1_scores(["", "x", "the"], ["", "", "an"]).tolist() == [1.0, 0.0, 1.0]
    # a repeated token counts as often as it occurs in both: [x b c c] vs [b c] -> common b, c
    assert token_f1(["x b c c"], ["b c"]) == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))


BLEU_PREDS = [
    "The cat is on the mat.",
    "There is a cat on the mat.",
    "A quick brown dog jumps over the lazy fox.",
    "hello",
]
BLEU_REFS = [
    "The cat is on the mat.",
    "The cat sits on the mat.",
    "The quick brown fox jumps over the lazy dog.",
    "goodbye world",
]


def test_bleu_is_sacrebleu_corpus_bleu_over_100():
    expected = sacrebleu.corpus_bleu(BLEU_PREDS, [BLEU_REFS]).score / 100
    assert 0 < expected < 1
    assert bleu(BLEU_PREDS, BLEU_REFS) == pytest.approx(expected, abs=1e-12)
    assert bleu(["the same four words"], ["the same four words"]) == pytest.approx(1.0)


def test_bleu_recomputed_on_a_resample_is_corpus_bleu_of_the_resample():
    scored = bleu_scored(BLEU_PREDS, BLEU_REFS)
    idx = [1, 1, 2, 3]
    weights = np.bincount(idx, minlength=4).astype(float)
    expected = (
        sacrebleu.corpus_bleu([BLEU_PREDS[i] for i in idx], [[BLEU_REFS[i] for i in idx]]).score
        / 100
    )
    assert float(scored.aggregate(weights @ scored.stats)) == pytest.approx(expected, abs=1e-12)


def test_rouge_by_hand_and_against_rouge_score():
    # ref: the cat sat on the mat (6 tokens); pred: the cat on the mat (5 tokens)
    r = rouge(["the cat on the mat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(10 / 11)  # 5 common unigrams: P 1, R 5/6
    assert r["rouge2"] == pytest.approx(2 / 3)  # 3 common bigrams: P 3/4, R 3/5
    assert r["rouge_l"] == pytest.approx(10 / 11)  # LCS of 5 tokens

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = rouge(BLEU_PREDS, BLEU_REFS)
    for name, key in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rouge_l", "rougeL")):
        expected = np.mean(
            [scorer.score(t, p)[key].fmeasure for p, t in zip(BLEU_PREDS, BLEU_REFS, strict=True)]
        )
        assert ours[name] == pytest.approx(expected, abs=1e-12)


def test_perplexity_is_exp_of_the_token_weighted_loss():
    sums, counts = [2.0, 9.0, 1.0], [2, 6, 4]  # mean loss per token: 12 / 12 = 1
    assert loss_scored(sums, counts).value == pytest.approx(1.0)
    assert perplexity_scored(sums, counts).value == pytest.approx(math.e)
    weights = np.array([2.0, 0.0, 1.0])  # a resample: (4 + 1) / (4 + 4)
    assert float(
        perplexity_scored(sums, counts).aggregate(weights @ np.array([sums, counts]).T)
    ) == (pytest.approx(math.exp(5 / 8)))


def test_score_strings_by_name():
    scored = score_strings(["exact_match", "token_f1", "rouge_l", "bleu"], BLEU_PREDS, BLEU_REFS)
    assert scored["exact_match"].value == 0.25
    assert scored["exact_match"].per_example.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert scored["bleu"].per_example is None  # a corpus metric has no per-example score
    assert scored["rouge_l"].value == pytest.approx(rouge(BLEU_PREDS, BLEU_REFS)["rouge_l"])
    with pytest.raises(ValueError, match="unknown"):
        score_strings(["meteor"], ["a"], ["a"])
