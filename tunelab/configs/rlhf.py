"""RLHF parameters, named after Vertex AI's RLHF tuning: a reward model trained on human
preferences, then reinforcement learning against it with a KL penalty to the base model.

    tunelab tune rlhf --preference examples/preference/preference.jsonl \
        --prompts examples/preference/prompts.jsonl --eval examples/preference/eval_prompts.jsonl \
        --name concise

Two typed configs: :class:`RLHFConfig` is the job's (REST body, CLI options, stored spec);
:class:`RewardModelConfig` is its first stage, derived from it (``RLHFConfig.reward_model()``) and
stored with the reward model it produced, so the registered reward model says how it was made.
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

RECOMMENDED_REWARD_MODEL_LEARNING_RATE = 1e-3
"""The rate ``reward_model_learning_rate_multiplier`` scales, for the reward model's LoRA adapter
and scalar head: supervised tuning's LoRA rate. On the example preference set
(examples/preference/) the SmolLM2-135M reward model reached 100% pairwise accuracy on 32
held-out pairs after 12 steps of 8 pairs, with a mean reward margin of 4.9; at 3e-4 it was as
accurate by step 10 but with a margin of 1.0 (3.3 by step 20), a weaker signal for stage 2."""

RECOMMENDED_RL_LEARNING_RATE = 5e-4
"""The rate ``reinforcement_learning_rate_multiplier`` scales, for the policy's LoRA adapter.
On the example prompts, 16 RLOO steps (4 prompts x 4 samples) moved SmolLM2-135M's mean reward
from about 0 to +1 at 5e-4 (tuned beat base on 72% of held-out prompts) and to +3.5 at 1e-3
(84%), with the KL to the base model at ~8 nats and still rising: for the default 40 steps the
lower rate is the recommendation."""

DEFAULT_REWARD_MODEL_TRAIN_STEPS = 50
"""CPU default. Vertex derives its default from the dataset size and recommends 100-500 steps;
a 135M model learns a clear preference in 10-20 steps of 8 pairs, and 50 take a few minutes on
2 cores."""

DEFAULT_RL_TRAIN_STEPS = 40
"""CPU default. Vertex recommends 100-500; each of our steps samples 16 answers, scores them
with the reward model and the reference, and takes one gradient step (several seconds for a
135M model on 2 cores), so 40 steps take minutes, not hours."""


class RewardModelConfig(ComputeFields, ParallelConfig):
    """Stage 1 of RLHF: a LoRA adapter and a linear scalar head on the base model, trained with
    the pairwise (Bradley-Terry) loss on human-preference pairs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["reward_model"] = "reward_model"
    base_model: str = Field(DEFAULT_BASE_MODEL, min_length=1, max_length=512)
    train_steps: int = Field(DEFAULT_REWARD_MODEL_TRAIN_STEPS, ge=1, le=1_000_000)
    learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        le=100,
        description=f"Multiplies {RECOMMENDED_REWARD_MODEL_LEARNING_RATE:g}.",
    )
    adapter_size: Literal[1, 2, 4, 8, 16] = Field(8, description="LoRA rank.")
    batch_size: int = Field(8, ge=1, le=1024, description="Preference pairs per step.")
    prompt_sequence_length: int = Field(512, ge=8, le=131_072)
    target_sequence_length: int = Field(64, ge=1, le=131_072)
    instruction: str | None = Field(None, max_length=10_000)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    eval_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of pairs held out (seeded) for pairwise accuracy.",
    )
    eval_every_steps: int = Field(25, ge=1)
    checkpoint_every_steps: int = Field(10, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    precision: Precision = precision_field()

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_REWARD_MODEL_LEARNING_RATE * self.learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        return 2 * self.adapter_size


class RLHFConfig(ComputeFields, ParallelConfig):
    """Vertex AI's RLHF tuning: reward model, then RLOO against it with a KL penalty.

    Vertex's parameters keep their names and defaults (``kl_coeff`` 0.1, learning-rate
    multipliers 1.0, ``prompt_sequence_length`` 512, ``target_sequence_length`` 64); the step
    counts default to what a CPU does in minutes (see the ``DEFAULT_*_TRAIN_STEPS`` notes).
    The rest are knobs Vertex keeps to itself, with the values we use.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        **form_layout(  # Vertex's RLHF parameters
            "reward_model_train_steps",
            "reward_model_learning_rate_multiplier",
            "reinforcement_learning_train_steps",
            "reinforcement_learning_rate_multiplier",
            "kl_coeff",
            "prompt_sequence_length",
            "target_sequence_length",
            "instruction",
            "adapter_size",
        ),
    )

    method: Literal["rlhf"] = "rlhf"
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        min_length=1,
        max_length=512,
        description="Catalog name, local model folder, or Hugging Face hub id.",
    )
    reward_model_train_steps: int = Field(
        DEFAULT_REWARD_MODEL_TRAIN_STEPS, ge=1, le=1_000_000, description="Reward-model steps."
    )
    reward_model_learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        le=100,
        description=f"Multiplies {RECOMMENDED_REWARD_MODEL_LEARNING_RATE:g}.",
    )
    reinforcement_learning_train_steps: int = Field(
        DEFAULT_RL_TRAIN_STEPS, ge=1, le=1_000_000, description="Policy (RLOO) steps."
    )
    reinforcement_learning_rate_multiplier: float = Field(
        1.0, gt=0, le=100, description=f"Multiplies {RECOMMENDED_RL_LEARNING_RATE:g}."
    )
    kl_coeff: float = Field(
        0.1,
        ge=0,
        le=100,
        description="Weight of the KL penalty to the base model; 0 skips the reference pass.",
    )
    prompt_sequence_length: int = Field(
        512, ge=8, le=131_072, description="Prompts are cut to their last N tokens."
    )
    target_sequence_length: int = Field(
        64,
        ge=1,
        le=131_072,
        description="Most tokens a response may have (sampled, and candidates truncated to it).",
    )
    instruction: str | None = Field(
        None,
        max_length=10_000,
        description="Prepended (with a blank line) to the first user turn of every prompt.",
    )
    adapter_size: Literal[1, 2, 4, 8, 16, 32] = Field(
        8,
        description="LoRA rank of both the reward model and the policy. vLLM serves policies "
        "of ranks up to its --max-lora-rank.",
    )
    reward_model_batch_size: int = Field(8, ge=1, le=1024, description="Pairs per step.")
    prompts_per_step: int = Field(4, ge=1, le=1024, description="Prompts per RL step.")
    samples_per_prompt: int = Field(
        4,
        ge=2,
        le=64,
        description="Responses sampled per prompt: RLOO's k (each one's baseline is the others).",
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order, init and sampling.")
    reward_model_eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of pairs held out for the reward model's accuracy."
    )
    checkpoint_every_steps: int = Field(
        10, ge=1, description="Write a resumable checkpoint every N steps (both stages)."
    )
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps with linear warm-up (both stages)."
    )
    keep_checkpoints: int = keep_checkpoints_field()
    precision: Precision = precision_field()
    deploy: DeployPolicy = deploy_field()

    @model_validator(mode="after")
    def _one_machine(self) -> RLHFConfig:
        # The policy stage of a machine > 0 would need the reward model, which only machine 0
        # (the job) has: several processes on one machine, yes; several machines, not yet.
        if self.nodes > 1:
            raise ValueError("rlhf trains on one machine: nodes must be 1 (use processes)")
        return self

    @property
    def reinforcement_learning_rate(self) -> float:
        return RECOMMENDED_RL_LEARNING_RATE * self.reinforcement_learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        return 2 * self.adapter_size

    def reward_model(self) -> RewardModelConfig:
        """The config of stage 1, as this job trains it."""
        return RewardModelConfig(
            base_model=self.base_model,
            train_steps=self.reward_model_train_steps,
            learning_rate_multiplier=self.reward_model_learning_rate_multiplier,
            adapter_size=self.adapter_size,
            batch_size=self.reward_model_batch_size,
            prompt_sequence_length=self.prompt_sequence_length,
            target_sequence_length=self.target_sequence_length,
            instruction=self.instruction,
            seed=self.seed,
            eval_fraction=self.reward_model_eval_fraction,
            checkpoint_every_steps=self.checkpoint_every_steps,
            warmup_ratio=self.warmup_ratio,
            precision=self.precision,
            **self.compute_fields(),
            processes=self.processes,
        )
