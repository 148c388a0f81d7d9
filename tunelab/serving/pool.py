"""Which engine and adapter answer a request for a model name.

One :class:`~tunelab.serving.engine.Engine` per base model holds that model once in memory and
serves every adapter tuned from it. Names are resolved against the registry on each request, so
a tuned model whose job has just succeeded is served at once, without a restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from tunelab.services import Services

logger = logging.getLogger(__name__)


class ModelNotAvailable(LookupError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    """The name the client used."""
    base_model: str
    adapter: tuple[str, Path] | None
    """(key, bundle folder) of the tuned adapter; None for the base model itself."""
    engine: object


class InferencePool:
    def __init__(self, services: Services, **engine_options) -> None:
        self.services = services
        self.engine_options = engine_options
        self._engines: dict[str, object] = {}
        self._lock = threading.Lock()

    def engine_for_base(self, base_ref: str):
        with self._lock:
            if base_ref not in self._engines:
                from tunelab.models import load_tokenizer, resolve_model
                from tunelab.serving.engine import Engine

                path = resolve_model(base_ref).path
                logger.info("loading base model %s for serving", base_ref)
                self._engines[base_ref] = Engine(
                    path, load_tokenizer(path), base_ref=base_ref, **self.engine_options
                )
            return self._engines[base_ref]

    def target(self, name: str) -> Target:
        """A tuned model (``name`` or ``name@version``) or a base model."""
        from tunelab.models import ModelNotFoundError
        from tunelab.registry.models import ModelNotRegistered, adapter_artifact, get_version

        try:
            version = get_version(self.services.db, name)
        except (ModelNotRegistered, ValueError):
            version = None
        if version is not None and version.method == "embedding":
            raise ModelNotAvailable(
                f"{name!r} is an embedding model: use /v1/embeddings or :predict"
            )
        if version is not None:
            folder = self.services.artifacts.local_path(
                adapter_artifact(self.services.db, version).uri
            )
            return Target(
                name,
                version.base_model,
                (version.id, folder),
                self.engine_for_base(version.base_model),
            )
        try:
            return Target(name, name, None, self.engine_for_base(name))
        except ModelNotFoundError as exc:
            raise ModelNotAvailable(f"no tuned or base model named {name!r}: {exc}") from None

    def endpoint_target(self, endpoint: str) -> Target:
        """An endpoint id serves its newest deployed version; a model name is accepted too."""
        from tunelab.registry.endpoints import deployed_version

        version = deployed_version(self.services.db, endpoint)
        if version is not None:
            return self.target(f"{version.model_name}@{version.version}")
        return self.target(endpoint)

    def embedding_target(self, name: str):
        """An embedding model (tuned, base or endpoint) that ``name`` names, else None; encoders
        are cached apart from the generative engines (tunelab.embeddings.serving)."""
        from tunelab.embeddings.serving import embedding_target

        return embedding_target(self, name)

    def model_names(self) -> list[tuple[str, str]]:
        """(name, owner) for /v1/models: the base models and every tuned model."""
        from tunelab.models.catalog import CATALOG
        from tunelab.registry.models import list_models

        names = [(n, "tunelab") for n in sorted(set(CATALOG) | set(self._engines))]
        return names + [(m.name, "user") for m in list_models(self.services.db)]

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
