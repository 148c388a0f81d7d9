"""The database schema: tuning jobs and their pipeline steps, datasets, artifacts, the model
registry, lineage, endpoints. One declarative module, so the whole data model reads in one place;
Alembic migrations (tunelab/db/migrations) create and evolve it.

Ids are strings the system makes (``job-…``, ``ds-…``), never user input; JSON columns hold
typed payloads (a job's config is the job type's pydantic config, dumped).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC: SQLite has no time zones, so every timestamp is stored and compared as UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime()}


class Dataset(Base):
    """A dataset version: content-addressed by sha256, stored once in the artifact store."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    """The name the user's file had: display only, never a path."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TuningJob(Base):
    __tablename__ = "tuning_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(512))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    datasets: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Role -> dataset id, e.g. ``{"train": "ds-…", "validation": "ds-…"}``."""
    state: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[str | None] = mapped_column(String(64))
    """The finer step while running: ``validating``, ``training step 12/120``, …"""
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """``{code, message, details}`` when FAILED."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    requested_action: Mapped[str | None] = mapped_column(String(16))
    """``pause`` or ``cancel``, set by a user, carried out by the worker that holds the job."""
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Transient failures so far; bounded by the worker's retry limit."""
    tuned_model_name: Mapped[str | None] = mapped_column(String(128))
    tuned_model_version: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str | None] = mapped_column(String(128))
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_jobs_claim", "state", "lease_expires_at"),)


class PipelineStep(Base):
    __tablename__ = "pipeline_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("tuning_jobs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    """PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED."""
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Artifact references ``{name: {"uri", "sha256"}}`` and small results."""
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (UniqueConstraint("job_id", "name"),)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("tuning_jobs.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobMetric(Base):
    """One row of a job's metrics (a training step or an evaluation)."""

    __tablename__ = "job_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("tuning_jobs.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TunedModel(Base):
    __tablename__ = "tuned_models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("tuned_models.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(512))
    adapter_artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    adapter_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source_job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    deploy_note: Mapped[str | None] = mapped_column(Text)
    """Why the job that made this version deployed it or registered it only (its ``deploy``
    setting and, for ``if_better``, the comparison with the version deployed before)."""
    vllm_check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Whether vLLM can serve its adapter and why not, checked at registration
    (``tunelab.serving.vllm_compat``: servable, reasons, rank, min_max_lora_rank); None for a
    version registered before it was stored, until a view checks it."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("model_name", "version"),)


class ModelAlias(Base):
    """A name for one version of a tuned model (``name@alias``): ``default`` (what ``name``
    alone means) and the user's own. An alias names one version; moving it is an update."""

    __tablename__ = "model_aliases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("tuned_models.name", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("model_name", "alias"),)


class LineageEdge(Base):
    """``src`` was used to make ``dst``: dataset -> job, job -> model version, reward model ->
    policy. Queried both ways."""

    __tablename__ = "lineage_edges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    src_kind: Mapped[str] = mapped_column(String(24))
    src_id: Mapped[str] = mapped_column(String(64))
    dst_kind: Mapped[str] = mapped_column(String(24))
    dst_id: Mapped[str] = mapped_column(String(64))
    relation: Mapped[str] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_lineage_src", "src_kind", "src_id"),
        Index("ix_lineage_dst", "dst_kind", "dst_id"),
    )


class Endpoint(Base):
    """Where tuned models are served: one base model, many adapters (deployed model versions)."""

    __tablename__ = "endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128))
    base_model: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    traffic_percentage: Mapped[int] = mapped_column(Integer, default=100, server_default="100")
    """Share of the requests to the endpoint id this version answers (the endpoint's shares sum
    to 100); a version with 0 is still served when named (``name@version``, an alias)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("endpoint_id", "model_version_id"),)


class ApiKey(Base):
    """An API key, stored as the sha256 of the secret; the secret is shown once, at creation."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """The key's public prefix (also the first characters of the secret), used to find it."""
    name: Mapped[str] = mapped_column(String(128))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")
    """``inference``, ``tune`` or ``admin``, each allowing what the one before does and more
    (tunelab.auth.SCOPES); keys made before scopes existed are ``admin``, as they could do all."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
