"""The tuning methods, listed once: the only place a method is registered.

A method is its typed config (``tunelab/configs/``), the dataset roles a job of it takes, its
pipeline (``tunelab/jobs/<method>_pipeline.py``, which defines ``PIPELINE``: the steps a job
runs) and the recipe(s) that pipeline trains with (``tunelab/recipes/``). Every face reads this
table: ``tunelab tune <method>`` builds its options from the config's JSON schema and the roles
(tunelab/cli/tune.py), ``POST /v1/tuningJobs`` validates its body's config with the config class,
``GET /v1/tuningMethods`` lists the schemas and roles (the Studio's form), and submit and the
worker take the pipeline from here.

The table lives in the jobs layer because that layer may import configs, pipelines and recipes
(nothing imports upward). Pipelines and recipes are named by module and imported only when a
job needs them, so reading the table (``tunelab --help``, the API's method listing) imports no
database, torch or transformers code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tunelab.configs.dpo import DPOConfig
from tunelab.configs.embedding import EmbeddingConfig
from tunelab.configs.rft import RFTConfig
from tunelab.configs.rlhf import RLHFConfig
from tunelab.configs.sft import SFTConfig

if TYPE_CHECKING:
    from tunelab.jobs.pipeline import PipelineDef


@dataclass(frozen=True)
class DatasetRole:
    """A dataset a job of the method takes, by the role the pipeline reads it under."""

    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class MethodSpec:
    config: type[BaseModel]
    """The typed config: REST body's ``config``, CLI options, SDK arguments, stored job spec."""
    dataset_roles: tuple[DatasetRole, ...]
    pipeline: str
    """Module that defines ``PIPELINE``, the :class:`~tunelab.jobs.pipeline.PipelineDef`."""
    recipes: tuple[str, ...]
    """Modules of the recipe(s) the pipeline trains with (read by people and by the table's
    test; the pipeline imports them itself, when a step runs)."""

    def load_pipeline(self) -> PipelineDef:
        return importlib.import_module(self.pipeline).PIPELINE


_VALIDATION = "Held-out data of the same format: evaluation during and after training."

METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec(
        config=SFTConfig,
        dataset_roles=(
            DatasetRole("train", "Training JSONL.", required=True),
            DatasetRole("validation", "Validation JSONL. " + _VALIDATION),
        ),
        pipeline="tunelab.jobs.sft_pipeline",
        recipes=("tunelab.recipes.sft",),
    ),
    "rlhf": MethodSpec(
        config=RLHFConfig,
        dataset_roles=(
            DatasetRole("preference", "Human-preference pairs (JSONL).", required=True),
            DatasetRole("prompts", "Prompts for reinforcement learning (JSONL).", required=True),
            DatasetRole("eval", "Held-out prompts: tuned vs base."),
        ),
        pipeline="tunelab.jobs.rlhf_pipeline",
        recipes=("tunelab.recipes.reward_model", "tunelab.recipes.rlhf"),
    ),
    "dpo": MethodSpec(
        config=DPOConfig,
        dataset_roles=(
            DatasetRole("preference", "Human-preference pairs (JSONL).", required=True),
            DatasetRole("validation", "Held-out preference pairs."),
        ),
        pipeline="tunelab.jobs.dpo_pipeline",
        recipes=("tunelab.recipes.dpo",),
    ),
    "embedding": MethodSpec(
        config=EmbeddingConfig,
        dataset_roles=(
            DatasetRole("corpus", "Corpus JSONL (_id, title, text).", required=True),
            DatasetRole("queries", "Queries JSONL (_id, text).", required=True),
            DatasetRole(
                "train_labels", "TSV with header query-id, corpus-id, score.", required=True
            ),
            DatasetRole(
                "test_labels", "Test labels TSV (default: 20% of the training queries, held out)."
            ),
            DatasetRole("validation_labels", "Validation labels TSV."),
        ),
        pipeline="tunelab.jobs.embedding_pipeline",
        recipes=("tunelab.recipes.embedding",),
    ),
    "rft": MethodSpec(
        config=RFTConfig,
        dataset_roles=(
            DatasetRole(
                "train", "Prompts (JSONL) with the fields the grader reads.", required=True
            ),
            DatasetRole("validation", "Held-out prompts: pass rate and reward, tuned vs base."),
        ),
        pipeline="tunelab.jobs.rft_pipeline",
        recipes=("tunelab.recipes.rft",),
    ),
}


class UnknownMethod(ValueError):
    """A method name that is not in :data:`METHODS`."""


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UnknownMethod(f"unknown tuning method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def pipeline_for(name: str) -> PipelineDef:
    return method_spec(name).load_pipeline()
