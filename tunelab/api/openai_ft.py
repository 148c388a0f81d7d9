"""OpenAI's fine-tuning request, mapped onto TuneLab's own job configs.

``POST /v1/fine_tuning/jobs`` takes OpenAI's body as its client sends it: ``model``,
``training_file``, ``validation_file``, ``suffix``, ``seed``, ``metadata`` and ``method``
(``{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {...}}}``; the older top-level
``hyperparameters`` is read as supervised's). It becomes an :class:`SFTConfig` or a
:class:`DPOConfig`, so the job is an ordinary TuneLab job: same pipeline, worker, registry.
``"auto"`` (or leaving a value out) means TuneLab's default for that parameter.

The tuned model is registered under OpenAI's name for it, ``ft:{base}:{suffix}:{id}``, so that
name is served by ``/v1/chat/completions`` the moment the job succeeds, like any registered name.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.api.openai_errors import OpenAIError
from tunelab.configs import DPOConfig, SFTConfig

Auto = Literal["auto"]
SUFFIX_PATTERN = r"^[A-Za-z0-9._-]*$"
"""The suffix is part of a model name a client types and the server splits on ``:``."""


class SupervisedHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None


class DPOHyperparameters(SupervisedHyperparameters):
    beta: float | Auto | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: SupervisedHyperparameters | None = None


class DPOMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DPOHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DPOMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(BaseModel):
    """OpenAI's ``JobCreateParams``, with its limits."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=512)
    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    suffix: str | None = Field(None, max_length=64, pattern=SUFFIX_PATTERN)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of method; read as supervised's."
    )
    integrations: list[dict[str, Any]] | None = None

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def requested_hyperparameters(self) -> tuple[dict[str, Any], str]:
        """The hyperparameters as asked (with "auto"s), and where they were given (for
        ``param`` in errors)."""
        kind = self.method_type()
        nested = getattr(self.method, kind, None) if self.method else None
        given = nested.hyperparameters if nested is not None else None
        if given is not None and self.hyperparameters is not None:
            raise OpenAIError(
                400,
                "invalid_value",
                f"give hyperparameters in method.{kind}.hyperparameters or the deprecated "
                "top-level hyperparameters, not both",
                "hyperparameters",
            )
        if given is None and self.hyperparameters is not None:
            if kind != "supervised":
                raise OpenAIError(
                    400,
                    "invalid_value",
                    f"top-level hyperparameters apply to supervised jobs; for {kind} give "
                    f"method.{kind}.hyperparameters",
                    "hyperparameters",
                )
            return self.hyperparameters.model_dump(exclude_none=True), "hyperparameters"
        where = f"method.{kind}.hyperparameters"
        return (given.model_dump(exclude_none=True) if given else {}), where


CONFIG_FIELD_TO_PARAM = {
    "epochs": "n_epochs",
    "batch_size": "batch_size",
    "learning_rate_multiplier": "learning_rate_multiplier",
    "beta": "beta",
}


def _check_metadata(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise OpenAIError(
                400,
                "invalid_value",
                f"metadata keys are at most 64 characters and values at most 512 ({key[:64]!r})",
                "metadata",
            )


def base_label(base_model: str) -> str:
    """The base model as it appears in an ``ft:`` name: a catalog name or hub id as given, a
    local folder by its own name (the full path is no part of a model name)."""
    path = Path(base_model)
    label = path.name if path.is_absolute() or path.is_dir() else base_model
    # Only name characters (tunelab.models.names.OPENAI_FT_NAME), so the name stays one.
    label = re.sub(r"[^A-Za-z0-9._-]", "-", label).lstrip("._-")[:48]
    return label or "base"


def fine_tuned_model_name(base_model: str, suffix: str | None) -> str:
    """``ft:{base}:{suffix}:{id}`` as OpenAI names tuned models (its last part an id of the
    model, not of the job); at most 3 + 48 + 1 + 64 + 1 + 8 = 125 characters."""
    return f"ft:{base_label(base_model)}:{suffix or ''}:{uuid.uuid4().hex[:8]}"


def build_config(body: FineTuningJobCreate, tuned_from) -> SFTConfig | DPOConfig:
    """The TuneLab config for the request. ``tuned_from`` is the registered model version that
    ``model`` names, if it names one (then DPO starts from that adapter, on its base)."""
    if body.integrations:
        raise OpenAIError(
            400, "invalid_value", "integrations (e.g. wandb) are not supported", "integrations"
        )
    _check_metadata(body.metadata)
    kind = body.method_type()
    if kind == "reinforcement":
        raise OpenAIError(
            400,
            "unsupported_method",
            "method.type 'reinforcement' is not supported; use 'supervised' or 'dpo' "
            "(TuneLab's RLHF has its own API: POST /v1/tuningJobs with method 'rlhf')",
            "method.type",
        )
    requested, where = body.requested_hyperparameters()
    values: dict[str, Any] = {
        {"n_epochs": "epochs"}.get(k, k): v for k, v in requested.items() if v != "auto"
    }
    if body.seed is not None:
        values["seed"] = body.seed
    if tuned_from is not None:
        if kind == "supervised":
            raise OpenAIError(
                400,
                "invalid_value",
                f"supervised tuning starts from a base model; {body.model!r} is a tuned model "
                f"(its base is {tuned_from.base_model!r}). DPO can start from it.",
                "model",
            )
        values["base_model"] = tuned_from.base_model
        values["init_adapter"] = f"{tuned_from.model_name}@{tuned_from.version}"
    else:
        values["base_model"] = body.model
    config_class = SFTConfig if kind == "supervised" else DPOConfig
    try:
        return config_class(**values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in CONFIG_FIELD_TO_PARAM:
            param = f"{where}.{CONFIG_FIELD_TO_PARAM[field]}"
        else:
            param = {"seed": "seed", "base_model": "model"}.get(field)
        raise OpenAIError(
            400, "invalid_value", f"{param or field}: {first['msg']}", param
        ) from None


def request_record(body: FineTuningJobCreate, fine_tuned_model: str) -> dict[str, Any]:
    """What the job keeps of the OpenAI request (beyond its config): the names and choices the
    job object shows back, as the client gave them."""
    requested, _ = body.requested_hyperparameters()
    return {
        "model": body.model,
        "suffix": body.suffix,
        "metadata": body.metadata,
        "method": body.method_type(),
        "hyperparameters": requested,
        "fine_tuned_model": fine_tuned_model,
    }
