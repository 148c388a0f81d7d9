"""The contrastive loss of embedding tuning: InfoNCE with in-batch negatives.

For a batch of B (query, positive passage) pairs with unit vectors q_i and p_j:

    s_ij  = cos(q_i, p_j) / tau
    loss  = -1/B * sum_i log( exp(s_ii) / sum_j exp(s_ij) )

i.e. cross-entropy where each query must pick its own passage among the B passages of the batch;
the other B-1 passages are its negatives at no extra encoding cost. This is InfoNCE (van den
Oord et al., 2018), used with in-batch negatives for retrieval by Henderson et al. (2017) and
DPR (Karpukhin et al., 2020); sentence-transformers calls it MultipleNegativesRankingLoss.
tau = 0.05 is SimCSE's temperature (Gao et al., 2021) and the inverse of sentence-transformers'
default scale of 20, the setting all-MiniLM-L6-v2 itself was trained with.

A passage in the batch that is *also* relevant to query i (two pairs of the same query, or a
passage shared by two queries) would be a false negative; ``false_negatives`` masks it out.
"""

from __future__ import annotations

import torch

TEMPERATURE = 0.05


def in_batch_contrastive_loss(
    queries: torch.Tensor,
    passages: torch.Tensor,
    temperature: float = TEMPERATURE,
    false_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, D) unit query vectors, (B, D) unit passage vectors (row i is query i's positive),
    optional (B, B) bool mask of off-diagonal pairs that are also relevant -> scalar loss."""
    scores = queries @ passages.T / temperature  # (B, B)
    if false_negatives is not None:
        eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(false_negatives & ~eye, float("-inf"))
    targets = torch.arange(len(scores), device=scores.device)
    return torch.nn.functional.cross_entropy(scores, targets)
