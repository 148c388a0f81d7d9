"""``tunelab tune <method>`` on a machine or rank that is not the job: it trains beside rank 0
and writes nothing. Two ways to get here:

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 1 ... -m tunelab.cli tune sft ...
    tunelab tune sft --train /shared/train.jsonl --name router --nodes 2 --node-rank 1 \\
        --master-addr 10.0.0.1

Rank 0, the job (node 0, or torchrun's rank 0), submits, trains, writes and registers; a
follower only needs the method's recipe, the config and the same data files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLLOWING = ("sft", "dpo", "embedding")
"""The methods whose ranks can run on other machines: one recipe, fed by the job's files.
(rlhf's policy stage needs the reward model only machine 0 has; rft runs in one process.)"""


def follower_call(method: str, config: Any, datasets: dict[str, Path | None]) -> tuple:
    """(recipe, data, *more) for :func:`tunelab.training.launch.follow`; ValueError saying
    why for a method that cannot follow."""
    if method == "sft":
        from tunelab.recipes.sft import train_sft

        return train_sft, datasets["train"], datasets.get("validation")
    if method == "dpo":
        from tunelab.recipes.dpo import train_dpo

        if config.init_adapter is not None:  # the reference is the policy at step 0
            raise ValueError("dpo with init_adapter trains on one machine: use --processes N")

        return train_dpo, datasets["preference"], datasets.get("validation")
    if method == "embedding":
        from tunelab.embeddings.data import load_embedding_data
        from tunelab.recipes.embedding import train_embedding

        roles = ("corpus", "queries", "train_labels", "test_labels", "validation_labels")
        data = load_embedding_data(*(datasets.get(r) for r in roles), seed=config.seed)
        return (train_embedding, data)
    raise ValueError(
        f"tune {method} trains on one machine: only {', '.join(FOLLOWING)} run under "
        f"torchrun or with --node-rank > 0; use --processes N"
    )


def follow_job(method: str, config: Any, datasets: dict[str, Path | None], node_rank: int) -> None:
    """Train as a follower (see the module's docstring) until rank 0 ends the run."""
    from tunelab.training.launch import follow

    recipe, data, *more = follower_call(method, config, datasets)
    follow(recipe, config, data, *more, node_rank=node_rank)
