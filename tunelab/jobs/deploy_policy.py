"""The deploy step: whether a job's new version replaces what its endpoint serves.

A job's ``deploy`` setting decides (each method's config has it):
- ``always``: deploy the new version;
- ``never``: register it only;
- ``if_better`` (the default): deploy it when nothing is deployed yet, or when it evaluates at
  least as well as the version the endpoint serves now *on the same held-out data* (the same
  dataset ids, so the same content); otherwise register it only and say why.

Deploying gives the new version all of the endpoint's traffic and moves the model's ``default``
alias to it; the versions deployed before stay deployed (served by ``name@version`` and their
aliases, 0% of the endpoint id's requests) until undeployed. The decision and its reason are
the step's outputs, a job event and the version's ``deploy_note``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tunelab.db import Database
from tunelab.db.schema import ModelVersion

logger = logging.getLogger(__name__)

DeployPolicy = Literal["if_better", "always", "never"]
DEPLOY_POLICIES: tuple[str, ...] = ("if_better", "always", "never")


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    higher_is_better: bool
    data: tuple[tuple[str, str], ...]
    """(role, dataset id) of the held-out data the score was measured on."""


@dataclass(frozen=True)
class Decision:
    deploy: bool
    reason: str


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _data(datasets: dict[str, str], roles: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((r, datasets[r]) for r in roles if datasets.get(r))


def _sft(v: ModelVersion, datasets: dict[str, str]) -> Score | None:
    loss = _dig(v.metrics, "best_eval_loss")
    data = _data(datasets, ("validation",))
    return Score("validation loss", loss, False, data) if loss is not None and data else None


def _dpo(v: ModelVersion, datasets: dict[str, str]) -> Score | None:
    # Reward accuracy, not the DPO loss: the loss scales with each job's beta.
    accuracy = _dig(v.metrics, "evaluation", "eval_reward_accuracy")
    data = _data(datasets, ("validation",))
    return Score("reward accuracy", accuracy, True, data) if accuracy is not None and data else None


def _embedding(v: ModelVersion, datasets: dict[str, str]) -> Score | None:
    ndcg = _dig(v.evaluation, "metrics", "test", "ndcg@10", "tuned")
    data = _data(datasets, ("corpus", "queries", "test_labels"))
    return Score("NDCG@10 on the test labels", ndcg, True, data) if ndcg is not None else None


RFT_GRADING = (
    "grader",
    "instruction",
    "prompt_sequence_length",
    "target_sequence_length",
    "grade_cut_answers",
)
"""The RFT config fields that decide how the evaluate step scores an answer: two versions'
rewards compare only when these are the same (a different grader or answer length is a
different test, even on the same prompts)."""


def _rft(v: ModelVersion, datasets: dict[str, str]) -> Score | None:
    reward = _dig(v.metrics, "evaluation", "mean_reward_tuned", "value")
    data = _data(datasets, ("validation",))
    if reward is None or not data:
        return None
    grading = {k: (v.config or {}).get(k) for k in RFT_GRADING}
    digest = hashlib.sha256(json.dumps(grading, sort_keys=True).encode()).hexdigest()[:12]
    return Score("mean reward", reward, True, (*data, ("grading", digest)))


SCORES: dict[str, Callable[[ModelVersion, dict[str, str]], Score | None]] = {
    "sft": _sft,
    "dpo": _dpo,
    "embedding": _embedding,
    "rft": _rft,
}
"""How a version of each method is compared: its score on its job's held-out data. A method
with no entry (RLHF: each job judges with its own reward model, so rewards do not compare) is
deployed by ``if_better`` only when nothing is deployed. RFT's rewards compare because the
grader is in the config: only between versions graded the same way (:data:`RFT_GRADING`)."""


def decide(db: Database, policy: str, new: ModelVersion, new_datasets: dict[str, str]) -> Decision:
    """Whether to deploy ``new`` (made by a job with ``new_datasets``) under ``policy``."""
    from tunelab.registry.endpoints import deployed_version, endpoint_id_for

    if policy == "never":
        return Decision(False, "deploy is 'never': registered only")
    if policy == "always":
        return Decision(True, "deploy is 'always'")
    current = deployed_version(db, endpoint_id_for(new.model_name))
    if current is None or current.id == new.id:
        return Decision(True, "nothing was deployed on the endpoint")
    ref = f"{current.model_name}@{current.version}"
    score = SCORES.get(new.method)
    mine = score(new, new_datasets) if score else None
    if mine is None:
        why = (
            f"{new.method} versions have no comparable evaluation"
            if score is None
            else "this job has no held-out (validation) data to compare on"
        )
        return Decision(False, f"{ref} is deployed and {why}: registered only ({_how(new)})")
    theirs = SCORES.get(current.method, lambda *_: None)(current, _job_datasets(db, current))
    if theirs is None or theirs.data != mine.data or theirs.metric != mine.metric:
        return Decision(
            False,
            f"{ref} is deployed and was not evaluated on the same held-out data "
            f"({_names(mine.data)}): registered only ({_how(new)})",
        )
    better = mine.value >= theirs.value if mine.higher_is_better else mine.value <= theirs.value
    compared = f"{mine.metric} {mine.value:.4g} vs {theirs.value:.4g} of {ref}"
    if better:
        return Decision(True, f"{compared}: at least as good")
    return Decision(False, f"{compared}: worse, so registered only ({_how(new)})")


def _how(v: ModelVersion) -> str:
    return f"deploy it with `tunelab models deploy {v.model_name}@{v.version}`"


def _names(data: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{role} {dataset}" for role, dataset in data)


def _job_datasets(db: Database, version: ModelVersion) -> dict[str, str]:
    from tunelab.jobs import store

    if version.source_job_id is None:
        return {}
    try:
        return dict(store.get_job(db, version.source_job_id).datasets or {})
    except LookupError:  # the job was deleted: nothing to say which data it was evaluated on
        return {}


def run_deploy_step(
    db: Database, job_id: str, policy: str, version_id: str, datasets: dict[str, str]
) -> dict[str, Any]:
    """The deploy step of a job: decide, deploy (all traffic, ``default`` alias) or not, and
    record why. Its outputs: ``endpoint`` (None when not deployed), ``deployed``, ``reason``."""
    from tunelab.jobs import store
    from tunelab.registry.aliases import move_default
    from tunelab.registry.endpoints import deploy_version

    with db.session() as s:
        version = s.get(ModelVersion, version_id)
    decision = decide(db, policy, version, datasets)
    endpoint = None
    if decision.deploy:
        endpoint = deploy_version(db, version_id).id
        move_default(db, version.model_name, version_id)
    note = ("deployed: " if decision.deploy else "not deployed: ") + decision.reason
    with db.session() as s:
        s.get(ModelVersion, version_id).deploy_note = note
    store.add_event(
        db,
        job_id,
        "deploy",
        f"{version.model_name}@{version.version} {note}",
        {"deployed": decision.deploy, "policy": policy},
    )
    logger.info("%s@%d %s", version.model_name, version.version, note)
    return {"endpoint": endpoint, "deployed": decision.deploy, "policy": policy, "reason": note}
