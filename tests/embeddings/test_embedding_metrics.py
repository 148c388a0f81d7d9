"""Retrieval metrics and the contrastive loss against values worked out by hand."""

import math

import pytest
import torch

from tunelab.embeddings.loss import in_batch_contrastive_loss
from tunelab.embeddings.metrics import (
    exact_search,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
)


def test_recall_and_mrr():
    ranking = ["a", "b", "c", "d"]
    labels = {"b": 1, "d": 2, "x": 1, "a": 0}  # "a" judged non-relevant
    assert recall_at_k(ranking, labels, 1) == 0
    assert recall_at_k(ranking, labels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, labels, 10) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, labels) == 0.5
    assert mrr_at_k(ranking, {"z": 1}) == 0


def test_ndcg_graded_by_hand():
    # ranking a, b, c with relevances 0, 2, 1; ideal order 2, 1 (no third relevant passage)
    # DCG = 0/log2(2) + 2/log2(3) + 1/log2(4) = 1.261860 + 0.5 = 1.761860
    # IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.630930 = 2.630930; NDCG = 0.669672
    value = ndcg_at_k(["a", "b", "c"], {"b": 2, "c": 1})
    assert value == pytest.approx((2 / math.log2(3) + 0.5) / (2 + 1 / math.log2(3)))
    assert value == pytest.approx(0.669672, abs=1e-6)
    assert ndcg_at_k(["b", "c"], {"b": 2, "c": 1}) == 1.0
    assert ndcg_at_k(["a"], {"b": 1}) == 0.0
    # cut at k: a relevant passage at rank 3 does not count for NDCG@2
    assert ndcg_at_k(["a", "x", "b"], {"b": 1}, k=2) == 0.0


def test_dataset_means_skip_queries_without_positives():
    rankings = {"q1": ["a", "b"], "q2": ["b", "a"], "q3": ["a"]}
    labels = {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"a": 0}}
    m = retrieval_metrics(rankings, labels)
    assert m["queries"] == 2
    assert m["recall@1"] == 0.5 and m["recall@5"] == 1.0
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_exact_search_is_cosine():
    corpus = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    top = exact_search(torch.tensor([[0.0, 1.0], [2.0, 0.1]]), corpus, ["x", "y", "z"], 2)
    assert top == [["y", "z"], ["x", "z"]]


def test_in_batch_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # scores / tau(=1): row 0 [1, 0.6] target 0; row 1 [0, 0.8] target 1
    expected = (
        -math.log(math.e / (math.e + math.exp(0.6))) - math.log(math.exp(0.8) / (1 + math.exp(0.8)))
    ) / 2
    assert in_batch_contrastive_loss(q, p, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # masking passage 0 as also relevant to query 1 leaves query 1 a single candidate: loss 0
    mask = torch.tensor([[False, False], [True, False]])
    masked = in_batch_contrastive_loss(q, p, 1.0, mask).item()
    assert masked == pytest.approx(-math.log(math.e / (math.e + math.exp(0.6))) / 2, rel=1e-6)
