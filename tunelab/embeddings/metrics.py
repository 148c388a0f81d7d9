"""Retrieval metrics, as BEIR and Vertex report them, and the exact search they are computed on.

All metrics take a ranking (corpus ids, best first) and the query's judged labels
``{corpus_id: relevance}``; a passage is relevant when its relevance is above 0. A dataset's
value is the mean over its queries (queries without a relevant passage are left out, as
``pytrec_eval`` does in BEIR).

- recall@k = |relevant in top k| / |relevant|
- MRR@k = 1 / rank of the first relevant passage within the top k, else 0
- NDCG@k (Järvelin & Kekäläinen, 2002, "Cumulated gain-based evaluation of IR techniques"),
  with graded relevance and a linear gain, as trec_eval/BEIR compute it:
      DCG@k  = sum_{i=1..k} rel_i / log2(i + 1)
      NDCG@k = DCG@k / IDCG@k,   IDCG@k: the DCG of the labels sorted best first
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

RECALL_KS = (1, 5, 10)
NDCG_K = 10
MRR_K = 10


def recall_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int) -> float:
    relevant = {c for c, s in labels.items() if s > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = MRR_K) -> float:
    for rank, cid in enumerate(ranking[:k], start=1):
        if labels.get(cid, 0) > 0:
            return 1.0 / rank
    return 0.0


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], labels: Mapping[str, float], k: int = NDCG_K) -> float:
    ideal = dcg(sorted((s for s in labels.values() if s > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([max(0.0, labels.get(cid, 0.0)) for cid in ranking[:k]]) / ideal


def retrieval_metrics(
    rankings: Mapping[str, Sequence[str]], labels: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Mean recall@1/5/10, NDCG@10 and MRR@10 over the queries with a relevant label."""
    queries = [q for q in labels if any(s > 0 for s in labels[q].values())]
    out: dict[str, float] = {}
    n = max(1, len(queries))
    for k in RECALL_KS:
        out[f"recall@{k}"] = sum(recall_at_k(rankings[q], labels[q], k) for q in queries) / n
    out[f"ndcg@{NDCG_K}"] = sum(ndcg_at_k(rankings[q], labels[q]) for q in queries) / n
    out[f"mrr@{MRR_K}"] = sum(mrr_at_k(rankings[q], labels[q]) for q in queries) / n
    out["queries"] = len(queries)
    return out


def exact_search(
    query_vectors: torch.Tensor, corpus_vectors: torch.Tensor, corpus_ids: Sequence[str], top_k: int
) -> list[list[str]]:
    """Brute-force cosine search: (Q, D) x (N, D) -> top-k corpus ids per query, best first.

    Vectors are normalised here, so the dot product is the cosine; ties break by corpus order.
    """
    q = torch.nn.functional.normalize(query_vectors.float(), dim=-1)
    c = torch.nn.functional.normalize(corpus_vectors.float(), dim=-1)
    scores = q @ c.T  # (Q, N)
    k = min(top_k, len(corpus_ids))
    top = torch.topk(scores, k, dim=1).indices
    return [[corpus_ids[j] for j in row] for row in top.tolist()]


def evaluate_encoder(encoder, data, labels: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Embed the whole corpus and the labelled queries, search, and score the rankings."""
    corpus_ids = sorted(data.corpus)
    corpus_vectors = encoder.encode([data.passage(c) for c in corpus_ids])
    query_ids = sorted(labels)
    query_vectors = encoder.encode([data.queries[q] for q in query_ids])
    top = exact_search(query_vectors, corpus_vectors, corpus_ids, max(NDCG_K, *RECALL_KS))
    return retrieval_metrics(dict(zip(query_ids, top, strict=True)), labels)


def compare(base: dict[str, float], tuned: dict[str, float]) -> dict[str, dict[str, float]]:
    """Side by side: {metric: {"base", "tuned", "delta"}}."""
    return {
        k: {"base": base[k], "tuned": tuned[k], "delta": tuned[k] - base[k]}
        for k in base
        if k != "queries"
    }
