"""The tuning methods, listed once: the only place a method is registered.

A method is its typed config (``tunelab/configs/``), the dataset roles a job of it takes, its
pipeline (``tunelab/jobs/<method>_pipeline.py``, which defines ``PIPELINE``: the steps a job
runs) and the recipe(s) that pipeline trains with (``tunelab/recipes/``). Every face reads this
table: ``tunelab tune <method>`` builds its options from the config's JSON schema and the roles
(tunelab/cli/tune.py), ``POST /v1/tuningJobs`` validates its body's config with the config class,
``GET /v1/tuningMethods`` lists the titles, schemas and roles (the Studio builds its create form
from them: tunelab/configs/form.py), and submit and the worker take the pipeline from here.

The table lives in the jobs layer because that layer may import configs, pipelines and recipes
(nothing imports upward). Pipelines and recipes are named by module and imported only when a
job needs them, so reading the table (``tunelab --help``, the API's method listing) imports no
database, torch or transformers code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    kind: str | None = None
    """How the Studio checks the file before submitting: the ``kind`` of
    ``GET /v1/datasets/{id}/validation`` (supervised, preference, prompts), or corpus, queries
    or labels (checked together by ``GET /v1/embeddingData/validation``). None: only the job's
    validate step reads it."""
    title: str = ""
    """Its name in the Studio (default: the role's name in words)."""

    @property
    def label(self) -> str:
        return self.title or self.name.replace("_", " ").capitalize()


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
    title: str = ""
    """The method's name in the Studio (default: its key)."""
    summary: str = ""
    """What it does, for someone choosing a method (default: the config's first sentence)."""
    role_aliases: dict[str, str] = field(default_factory=dict)
    """Other names a role is accepted under, {alias: role} (DPO's pairs as ``train``, so the
    REST API's ``train_dataset`` and OpenAI's ``training_file`` reach it)."""

    @property
    def role_names(self) -> tuple[str, ...]:
        """Every name a dataset of a job of this method may be given under."""
        return tuple(r.name for r in self.dataset_roles) + tuple(self.role_aliases)

    @property
    def about(self) -> str:
        doc = " ".join((inspect.getdoc(self.config) or "").split("\n\n")[0].split())
        return self.summary or doc.replace("``", "")

    def load_pipeline(self) -> PipelineDef:
        return importlib.import_module(self.pipeline).PIPELINE


_VALIDATION = "Held-out data of the same format: evaluation during and after training."
_PREFERENCE = DatasetRole(
    "preference",
    "Human-preference pairs (JSONL).",
    required=True,
    kind="preference",
    title="Preference pairs",
)

METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec(
        config=SFTConfig,
        dataset_roles=(
            DatasetRole(
                "train", "Training JSONL.", required=True, kind="supervised", title="Training data"
            ),
            DatasetRole(
                "validation",
                "Validation JSONL. " + _VALIDATION,
                kind="supervised",
                title="Validation data",
            ),
        ),
        pipeline="tunelab.jobs.sft_pipeline",
        recipes=("tunelab.recipes.sft",),
        title="Supervised tuning",
        summary="Input/output examples (Vertex text, Gemini or OpenAI chat JSONL). The model "
        "learns to answer like the outputs.",
    ),
    "rlhf": MethodSpec(
        config=RLHFConfig,
        dataset_roles=(
            _PREFERENCE,
            DatasetRole(
                "prompts",
                "Prompts for reinforcement learning (JSONL).",
                required=True,
                kind="prompts",
            ),
            DatasetRole(
                "eval",
                "Held-out prompts: tuned vs base.",
                kind="prompts",
                title="Evaluation prompts",
            ),
        ),
        pipeline="tunelab.jobs.rlhf_pipeline",
        recipes=("tunelab.recipes.reward_model", "tunelab.recipes.rlhf"),
        title="RLHF",
        summary="Preference pairs (prompt, two candidates, choice) train a reward model; then "
        "reinforcement learning on prompts earns its reward, with a KL penalty to the base model.",
    ),
    "dpo": MethodSpec(
        config=DPOConfig,
        dataset_roles=(
            _PREFERENCE,
            DatasetRole(
                "validation",
                "Held-out preference pairs.",
                kind="preference",
                title="Validation pairs",
            ),
        ),
        pipeline="tunelab.jobs.dpo_pipeline",
        recipes=("tunelab.recipes.dpo",),
        role_aliases={"train": "preference"},
        title="DPO",
        summary="Preference pairs (prompt, chosen, rejected), optimised directly without a "
        "reward model.",
    ),
    "embedding": MethodSpec(
        config=EmbeddingConfig,
        dataset_roles=(
            DatasetRole("corpus", "Corpus JSONL (_id, title, text).", required=True, kind="corpus"),
            DatasetRole("queries", "Queries JSONL (_id, text).", required=True, kind="queries"),
            DatasetRole(
                "train_labels",
                "TSV with header query-id, corpus-id, score.",
                required=True,
                kind="labels",
                title="Training labels",
            ),
            DatasetRole(
                "test_labels",
                "Test labels TSV (default: 20% of the training queries, held out).",
                kind="labels",
            ),
            DatasetRole("validation_labels", "Validation labels TSV.", kind="labels"),
        ),
        pipeline="tunelab.jobs.embedding_pipeline",
        recipes=("tunelab.recipes.embedding",),
        title="Embedding tuning",
        summary="A corpus, queries and labels (which passages answer which query), as Vertex "
        "takes them: the encoder learns to rank the labelled passages first.",
    ),
    "rft": MethodSpec(
        config=RFTConfig,
        dataset_roles=(
            DatasetRole(
                "train",
                "Prompts (JSONL) with the fields the grader reads.",
                required=True,
                kind="prompts",
                title="Prompts",
            ),
            DatasetRole(
                "validation",
                "Held-out prompts: pass rate and reward, tuned vs base.",
                kind="prompts",
                title="Held-out prompts",
            ),
        ),
        pipeline="tunelab.jobs.rft_pipeline",
        recipes=("tunelab.recipes.rft",),
        title="Reinforcement fine-tuning",
        summary="Prompts with the fields a grader checks (an exact label, a number, JSON with "
        "given keys, a Python function): the model samples answers and learns from the "
        "grader's rewards (GRPO), with a KL penalty to the base model.",
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


class DatasetRoleError(ValueError):
    """Datasets given under roles a method does not take, or without a role it needs: every
    problem at once, as (role, message); ``allowed`` are the names the method takes."""

    def __init__(self, method: str, problems: list[tuple[str, str]], allowed: tuple[str, ...]):
        super().__init__("; ".join(message for _, message in problems))
        self.method = method
        self.problems = problems
        self.allowed = allowed


def check_dataset_roles(method: str, given: Iterable[str]) -> None:
    """Refuse, before a job is queued, datasets under a role the method's pipeline would never
    read (a misspelt ``trainn`` was stored and silently ignored) and a missing required role
    (which only failed the job's validate step). Raises :class:`DatasetRoleError`, or
    :class:`UnknownMethod`."""
    spec = method_spec(method)
    given = list(given)
    allowed = spec.role_names
    listing = ", ".join(
        r.name + "".join(f" (or {a})" for a, t in spec.role_aliases.items() if t == r.name)
        for r in spec.dataset_roles
    )
    problems = []
    for role in given:
        if role not in allowed:
            close = difflib.get_close_matches(role, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            shown = role if len(role) <= 64 else role[:64] + "…"  # a request's key, echoed
            problems.append(
                (shown, f"{method} jobs take no {shown!r} dataset (their roles: {listing}){hint}")
            )
    for role in spec.dataset_roles:
        names = [role.name, *(a for a, t in spec.role_aliases.items() if t == role.name)]
        present = [n for n in names if n in given]
        if len(present) > 1:
            problems.append((present[1], f"give {' or '.join(map(repr, present))}, not both"))
        elif role.required and not present:
            problems.append(
                (role.name, f"{method} jobs need a {role.name!r} dataset: {role.description}")
            )
    if problems:
        raise DatasetRoleError(method, problems, allowed)
