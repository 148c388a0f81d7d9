"""Embedding tuning parameters, named as Vertex AI names them for text-embedding tuning
(``batch_size``, ``train_steps``, ``learning_rate_multiplier``, ``output_dimensionality``).

Defaults are sized for a CPU: Vertex's own defaults (batch 128, 1000 steps) assume accelerators.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from tunelab.configs.compute import ComputeFields
from tunelab.configs.form import form_layout
from tunelab.configs.parallel import ParallelConfig
from tunelab.configs.sft import DeployPolicy, deploy_field

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
RECOMMENDED_EMBEDDING_LEARNING_RATE = 1e-3
"""The rate ``learning_rate_multiplier`` scales, for LoRA on a small encoder. With rank 8 on
all-MiniLM-L6-v2 and the example data, 1e-3 converged within ~60 steps without instability;
1e-4 barely moved NDCG in that budget."""


class EmbeddingConfig(ComputeFields, ParallelConfig):
    """Parameter-efficient tuning of a text-embedding model: a LoRA adapter (rank
    ``adapter_size``) on the query/key/value and dense layers of every encoder block, trained
    with an in-batch-negatives contrastive loss on (query, relevant passage) pairs."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        **form_layout(
            "train_steps",
            "batch_size",
            "learning_rate_multiplier",
            "adapter_size",
            "output_dimensionality",
            "max_seq_length",
        ),
    )

    method: Literal["embedding"] = "embedding"
    base_model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        min_length=1,
        max_length=512,
        description="Embedding catalog name, local encoder folder, or Hugging Face hub id.",
    )
    train_steps: int = Field(60, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(
        32,
        ge=2,
        le=1024,
        description="Pairs per step; each query's negatives are the other passages of its batch.",
    )
    learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        le=100,
        description=f"Multiplies the recommended rate ({RECOMMENDED_EMBEDDING_LEARNING_RATE:g}).",
    )
    output_dimensionality: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="Keep the first d coordinates and renormalise (default: the model's size).",
    )
    adapter_size: Literal[1, 2, 4, 8, 16, 32] = Field(8, description="LoRA rank.")
    temperature: float = Field(0.05, gt=0, le=1, description="Softmax temperature of the loss.")
    max_seq_length: int = Field(
        256, ge=8, le=8192, description="Longer queries and passages are truncated."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds pair order, split and init.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with warm-up.")
    checkpoint_every_steps: int = Field(20, ge=1, description="Resumable checkpoint every N steps.")
    deploy: DeployPolicy = deploy_field()

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_EMBEDDING_LEARNING_RATE * self.learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        return 2 * self.adapter_size
