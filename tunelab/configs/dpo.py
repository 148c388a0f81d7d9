"""DPO parameters: preference tuning without a reward model (Rafailov et al. 2023).

    tunelab tune dpo --preference examples/preference/preference.jsonl \
        --validation examples/preference/heldout_pairs.jsonl --name concise-dpo

Named like Vertex AI's preference tuning (``beta``, ``epochs``, ``learning_rate_multiplier``,
``adapter_size``), with supervised tuning's extras (batch size, steps, seed).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.configs.compute import ComputeFields
from tunelab.configs.form import form_layout
from tunelab.configs.parallel import ParallelConfig
from tunelab.configs.sft import (
    DeployPolicy,
    Precision,
    deploy_field,
    keep_checkpoints_field,
    precision_field,
)

RECOMMENDED_DPO_LEARNING_RATE = 1e-4
"""The rate ``learning_rate_multiplier`` scales. DPO papers use 5e-7 to 5e-6 for full
fine-tuning; a LoRA adapter takes rates 10-100x higher. On the example preference set,
SmolLM2-135M with rank 8 at 1e-4 reached 100% reward accuracy on 48 held-out pairs in 16 steps
of 8 pairs, the preferred answers' log-probabilities rising on the training batches (not only
the rejected ones' falling)."""

DEFAULT_EPOCHS = 1


class DPOConfig(ComputeFields, ParallelConfig):
    """Direct preference optimisation of a LoRA adapter, optionally starting from a supervised
    adapter (``init_adapter``).

    The reference policy is the policy at step 0: the base model, or the supervised adapter the
    run starts from. Its log-probabilities are computed once before training (as TRL's
    ``precompute_ref_log_probs``), so no second copy of the weights and no reference forward
    pass per step are needed.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        **form_layout(
            "epochs",
            "train_steps",
            "beta",
            "learning_rate_multiplier",
            "adapter_size",
            "batch_size",
            "prompt_sequence_length",
            "target_sequence_length",
        ),
    )

    method: Literal["dpo"] = "dpo"
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        min_length=1,
        max_length=512,
        description="Catalog name, local model folder, or Hugging Face hub id.",
    )
    init_adapter: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Start from this tuned model (registered name, name@version) or adapter "
        "bundle folder; it is also the reference. Its base must be base_model.",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="Strength of the KL constraint to the reference (higher: stay closer).",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=f"Passes over the pairs (default {DEFAULT_EPOCHS}).",
        json_schema_extra={"x-when-empty": DEFAULT_EPOCHS},
    )
    train_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps; an alternative to epochs."
    )
    learning_rate_multiplier: float = Field(
        1.0, gt=0, le=100, description=f"Multiplies {RECOMMENDED_DPO_LEARNING_RATE:g}."
    )
    adapter_size: Literal[1, 2, 4, 8, 16, 32] = Field(
        8,
        description="LoRA rank (with init_adapter, that adapter's rank is kept). vLLM serves "
        "ranks up to its --max-lora-rank.",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Preference pairs per step.")
    prompt_sequence_length: int = Field(
        512, ge=8, le=131_072, description="Prompts are cut to their last N tokens."
    )
    target_sequence_length: int = Field(
        512, ge=1, le=131_072, description="Candidates are cut to their first N tokens."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds pair order and adapter init.")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps with linear warm-up."
    )
    precision: Precision = precision_field()
    deploy: DeployPolicy = deploy_field()
    eval_every_steps: int = Field(20, ge=1, description="Evaluate on validation pairs every N.")
    checkpoint_every_steps: int = Field(
        20, ge=1, description="Write a resumable checkpoint every N steps."
    )
    keep_checkpoints: int = keep_checkpoints_field()

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> DPOConfig:
        if self.epochs is not None and self.train_steps is not None:
            raise ValueError("give epochs or train_steps, not both")
        if self.init_adapter is not None and self.nodes > 1:
            # Every rank computes the reference (the policy at step 0) for its own pairs, and a
            # machine > 0 has no registry to resolve the adapter from.
            raise ValueError("init_adapter needs nodes 1 (the other machines cannot load it)")
        return self

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_DPO_LEARNING_RATE * self.learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        return 2 * self.adapter_size

    def total_steps(self, n_pairs: int) -> int:
        if self.train_steps is not None:
            return self.train_steps
        return -(-n_pairs // self.batch_size) * (self.epochs or DEFAULT_EPOCHS)
