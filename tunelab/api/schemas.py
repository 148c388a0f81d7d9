"""Request bodies (and their limits). Responses are the views in tunelab.jobs.views, shared
with the CLI's --json output."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TuningJobCreate(BaseModel):
    """Create a tuning job. ``config`` is the method's typed config (SFTConfig for ``sft``)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("sft", max_length=32)
    tuned_model_display_name: str = Field(..., min_length=1, max_length=128)
    train_dataset: str | None = Field(
        None, min_length=1, max_length=40, description="Dataset id from POST /v1/datasets."
    )
    validation_dataset: str | None = Field(None, max_length=40)
    datasets: dict[str, str] = Field(
        default_factory=dict,
        max_length=8,
        description="Other dataset roles by id, e.g. {'preference': 'ds-…', 'prompts': 'ds-…'} for "
        "RLHF: the method's roles only (GET /v1/tuningMethods lists them); any other is refused.",
    )
    config: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=128)

    def dataset_roles(self) -> dict[str, str]:
        roles = dict(self.datasets)
        if self.train_dataset:
            roles["train"] = self.train_dataset
        if self.validation_dataset:
            roles["validation"] = self.validation_dataset
        return roles

    def role_field(self, role: str) -> str:
        """The body's field that gives (or would give) the dataset of ``role``."""
        if role == "train" and self.train_dataset:
            return "train_dataset"
        if role == "validation" and self.validation_dataset:
            return "validation_dataset"
        return f"datasets.{role}"


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        min_length=1,
        max_length=140,
        description="Tuned model name, name@version or name@alias.",
    )
    traffic_percentage: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Its share of the endpoint's requests (the others' shares are scaled to "
        "the rest); by default all of them. Versions with 0 are served when named.",
    )


class UndeployRequest(BaseModel):
    """Undeploy one version (by ``model`` reference or ``model_version_id``), or every version
    of the endpoint when neither is given."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=140)
    model_version_id: str | None = Field(None, max_length=40)


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(..., ge=1, description="The version the alias is to name.")
