"""Reinforcement fine-tuning (RFT) parameters: a LoRA policy tuned toward what a program can
check, with group-relative advantages (GRPO-style) and a KL penalty to the base model.

    tunelab tune rft --train examples/rft/train.jsonl --validation examples/rft/validation.jsonl \
        --grader examples/rft/grader.json --name answer-format

Named like the RLHF config where it has the same knob (``kl_coeff``, ``samples_per_prompt``,
``prompt_sequence_length``, ``target_sequence_length``, ``instruction``); the grader is the
JSON of :mod:`tunelab.graders.spec`, validated with the rest of the config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.configs.compute import ComputeFields
from tunelab.configs.form import form_layout
from tunelab.configs.sft import DeployPolicy, Precision, deploy_field, precision_field
from tunelab.graders.spec import GraderSpec

RECOMMENDED_RFT_LEARNING_RATE = 2e-3
"""The rate ``learning_rate_multiplier`` scales, for the policy's LoRA adapter. On the example
(examples/rft/: a number as ``Answer: N``), SmolLM2-135M's sampled answers pass 6% of the time at
the first step; at 8e-3 (multiplier 4) a single AdamW step after one passing sample in 16 made
every sample start ``Answer: Answer:``, which is why the default stays at 2e-3."""

DEFAULT_TRAIN_STEPS = 40
"""CPU default, as RLHF's policy stage: each step samples, grades and takes one gradient step
(a few seconds for a 135M model on 2 cores)."""


class RFTConfig(ComputeFields):
    """Reinforcement fine-tuning with a grader: k answers per prompt, advantage = reward minus
    the group's mean (divided by its std unless ``scale_rewards`` is off), KL to the base."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        **form_layout(
            "grader",
            "train_steps",
            "learning_rate_multiplier",
            "kl_coeff",
            "samples_per_prompt",
            "prompts_per_step",
            "pass_threshold",
            "target_sequence_length",
            "instruction",
        ),
    )

    method: Literal["rft"] = "rft"
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        min_length=1,
        max_length=512,
        description="Catalog name, local model folder, or Hugging Face hub id.",
    )
    grader: GraderSpec = Field(
        description="How an answer is scored (JSON): string_check, text_similarity, "
        "json_schema, numeric, score_model, python, or weighted_sum/all/any of them; "
        "{{item.FIELD}} reads a field of the prompt's line.",
        examples=[{"type": "numeric", "reference": "{{item.answer}}"}],
    )
    pass_threshold: float = Field(
        1.0, description="An answer passes when its reward is at least this (for pass rates)."
    )
    train_steps: int = Field(DEFAULT_TRAIN_STEPS, ge=1, le=1_000_000, description="RL steps.")
    learning_rate_multiplier: float = Field(
        1.0, gt=0, le=100, description=f"Multiplies {RECOMMENDED_RFT_LEARNING_RATE:g}."
    )
    kl_coeff: float = Field(
        0.05,
        ge=0,
        le=100,
        description="Weight of the KL penalty to the base model; 0 skips the reference pass.",
    )
    samples_per_prompt: int = Field(
        4, ge=2, le=64, description="Answers sampled per prompt: the group of GRPO."
    )
    prompts_per_step: int = Field(4, ge=1, le=1024, description="Prompts per step.")
    scale_rewards: bool = Field(
        True, description="Divide each advantage by its group's reward std (GRPO)."
    )
    grade_cut_answers: bool = Field(
        False,
        description="Grade an answer that target_sequence_length cut before it ended as it "
        "stands. Off, such an answer scores 0 without being graded: it is unfinished, and "
        "partial credit for it (a format check that still passes, a similarity) rewards "
        "answers that run on, e.g. repeating digits.",
    )
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of rollouts.")
    prompt_sequence_length: int = Field(
        512, ge=8, le=131_072, description="Prompts are cut to their last N tokens."
    )
    target_sequence_length: int = Field(
        64, ge=1, le=131_072, description="Most tokens an answer may have."
    )
    instruction: str | None = Field(
        None,
        max_length=10_000,
        description="Prepended (with a blank line) to the first user turn of every prompt.",
    )
    adapter_size: Literal[1, 2, 4, 8, 16] = Field(8, description="LoRA rank.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds data order, init and sampling.")
    checkpoint_every_steps: int = Field(
        10, ge=1, description="Write a resumable checkpoint every N steps."
    )
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps with linear warm-up."
    )
    precision: Precision = precision_field()
    deploy: DeployPolicy = deploy_field()
    """if_better compares the held-out prompts' mean reward, only between versions graded the
    same way (tunelab.jobs.deploy_policy.RFT_GRADING)."""

    @property
    def learning_rate(self) -> float:
        return RECOMMENDED_RFT_LEARNING_RATE * self.learning_rate_multiplier

    @property
    def lora_alpha(self) -> int:
        return 2 * self.adapter_size
