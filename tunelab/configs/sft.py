"""Supervised tuning (LoRA) parameters, named after Vertex AI's where it has a name for them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.configs.compute import ComputeFields
from tunelab.configs.form import form_layout
from tunelab.configs.parallel import ParallelConfig

RECOMMENDED_LEARNING_RATE = 1e-3
"""The rate ``learning_rate_multiplier`` scales. LoRA tolerates rates about 10x those of full
fine-tuning; on SmolLM2-135M with rank 8 on all linear layers, 1e-3 converged fastest without
instability in our runs (2e-4, the common default for 7B models, needed ~3x the steps)."""

DEFAULT_EPOCHS = 3

Precision = Literal["auto", "fp32", "bf16"]


def keep_checkpoints_field():
    """The ``keep_checkpoints`` field of the LoRA methods whose checkpoints are models."""
    return Field(
        3,
        ge=0,
        le=100,
        description=(
            "Checkpoints kept as models after the job (listed with their metrics, evaluated, "
            "servable as name@checkpoint-STEP, promotable to a version): the last N, plus the "
            "best by validation loss. 0 keeps only the final adapter."
        ),
    )


def precision_field():
    """The ``precision`` field every LoRA method's config has (see tunelab.training.precision)."""
    return Field(
        "auto",
        description=(
            "Training compute format: bf16 mixed precision (frozen weights and activations in "
            "bf16; adapter, gradients, optimizer and loss in fp32) or fp32. auto measures which "
            "is faster on this machine and takes bf16 only when it clearly is."
        ),
    )


DeployPolicy = Literal["if_better", "always", "never"]


def deploy_field():
    """The ``deploy`` field every method's config has (see tunelab.jobs.deploy_policy)."""
    return Field(
        "if_better",
        description=(
            "Whether the new version is deployed when the job succeeds: if_better deploys it "
            "when nothing is deployed or it evaluates at least as well as the deployed version "
            "on the same held-out data (else registers it only, saying why); always; never."
        ),
    )


class SFTConfig(ComputeFields, ParallelConfig):
    """Supervised fine-tuning with a LoRA adapter on every linear layer of the base model."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        **form_layout(
            "epochs",
            "train_steps",
            "learning_rate_multiplier",
            "adapter_size",
            "batch_size",
            "max_seq_length",
        ),
    )

    method: Literal["sft"] = "sft"
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        min_length=1,
        max_length=512,
        description="Catalog name, local model folder, or Hugging Face hub id; a tuned model "
        "(name or name@version) continues tuning from its adapter on its base model.",
    )
    init_adapter: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Start from this tuned model's adapter (registered name or name@version); "
        "set from base_model when that names a tuned model. Its base must be base_model.",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=f"Passes over the training data (default {DEFAULT_EPOCHS}).",
        json_schema_extra={"x-when-empty": DEFAULT_EPOCHS},
    )
    train_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps; an alternative to epochs."
    )
    learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        le=100,
        description=f"Multiplies the recommended learning rate ({RECOMMENDED_LEARNING_RATE:g}).",
    )
    adapter_size: Literal[1, 2, 4, 8, 16, 32] = Field(
        8,
        description="LoRA rank, as Vertex names it. vLLM serves ranks up to its --max-lora-rank.",
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per optimizer step.")
    max_seq_length: int = Field(
        1024,
        ge=16,
        le=131_072,
        description="Longer examples are truncated (or dropped if no model turn is left).",
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order and adapter init.")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps with linear warm-up."
    )
    eval_every_steps: int = Field(
        20, ge=1, description="Evaluate on the validation set every N steps."
    )
    checkpoint_every_steps: int = Field(
        20, ge=1, description="Write a resumable checkpoint every N steps."
    )
    keep_checkpoints: int = keep_checkpoints_field()
    precision: Precision = precision_field()
    deploy: DeployPolicy = deploy_field()
    early_stopping_patience: int | None = Field(
        3,
        ge=0,
        description="Stop after this many evaluations without a better eval loss; 0 or null "
        "disables.",
    )

    @field_validator("early_stopping_patience")
    @classmethod
    def _zero_disables(cls, value: int | None) -> int | None:
        # 0 is how the CLI has always said "no early stopping"; stored as null, as REST says it.
        return value or None

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> SFTConfig:
        if self.epochs is not None and self.train_steps is not None:
            raise ValueError("give epochs or train_steps, not both")
        return self

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_LEARNING_RATE * self.learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        # alpha = 2 * rank keeps the update's scale (alpha / rank) fixed across adapter sizes.
        return 2 * self.adapter_size

    def total_steps(self, n_examples: int) -> int:
        if self.train_steps is not None:
            return self.train_steps
        per_epoch = -(-n_examples // self.batch_size)
        return per_epoch * (self.epochs or DEFAULT_EPOCHS)
