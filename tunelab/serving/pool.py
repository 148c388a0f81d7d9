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
    def __init__(self, services: Services, *, backend=None, **engine_options) -> None:
        self.services = services
        self.engine_options = engine_options
        self.backend = backend
        """An engine server that serves a base instead of the builtin engine (``--engine vllm``:
        :class:`tunelab.serving.vllm_backend.VllmBackend`); None: the builtin engine."""
        self._engines: dict[str, object] = {}
        """Engines by the resolved folder of their base model: however a base is reached (its
        name, a tuned model's stored reference), it is loaded once."""
        self._lock = threading.Lock()

    def engine_for_base(self, base_ref: str):
        """The engine of a base model the operator names (``serve --preload``): a servable
        name, or a tuned model's stored base reference."""
        from tunelab.registry.resolve import ModelTarget

        return self._engine(ModelTarget(ref=base_ref, kind="base", base_model=base_ref))

    def _engine(self, resolved):
        from tunelab.registry.resolve import base_folder

        path = base_folder(resolved)
        if self.backend is not None:
            return self.backend.engine_for(path)
        key = str(path.resolve())
        with self._lock:
            if key not in self._engines:
                from tunelab.models import load_tokenizer
                from tunelab.serving.engine import Engine

                logger.info("loading base model %s for serving", resolved.base_model)
                self._engines[key] = Engine(
                    path, load_tokenizer(path), base_ref=resolved.base_model, **self.engine_options
                )
            return self._engines[key]

    def target(self, name: str) -> Target:
        """What a request's model reference names (tuned model, endpoint id or servable base),
        by :func:`tunelab.registry.resolve.resolve`; nothing else, and no path in errors."""
        from tunelab.registry.resolve import ModelNotFound, resolve

        try:
            resolved = resolve(self.services, name)
            check_deployed(self.services, resolved)
            if resolved.method == "embedding":
                raise ModelNotAvailable(
                    f"{name!r} is an embedding model: use /v1/embeddings or :predict"
                )
            if resolved.kind == "base" and _is_embedding_base(name):
                raise ModelNotAvailable(
                    f"{name!r} is an embedding model: use /v1/embeddings or :predict"
                )
            engine = self._engine(resolved)
        except ModelNotFound as exc:
            raise ModelNotAvailable(str(exc)) from None
        if resolved.kind == "tuned":
            adapter = (resolved.adapter_key, resolved.adapter_dir)
            return Target(name, resolved.base_model, adapter, engine)
        return Target(name, resolved.base_model, None, engine)

    def drop_versions(self, version_ids: list[str]) -> None:
        """Unload undeployed versions from every engine (and encoder cache) now, so the memory
        they held serves the versions still deployed; requests for them are refused already."""
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            for version_id in version_ids:
                engine.drop_adapter(version_id)
        encoders = self.__dict__.get("_embedding_encoders")
        if encoders is not None:
            for version_id in version_ids:
                encoders.drop(version_id)

    def endpoint_target(self, endpoint: str) -> Target:
        """An endpoint id serves its newest deployed version; a model name is accepted too."""
        return self.target(endpoint)

    def embedding_target(self, name: str):
        """An embedding model (tuned, base or endpoint) that ``name`` names, else None; encoders
        are cached apart from the generative engines (tunelab.embeddings.serving)."""
        from tunelab.embeddings.serving import embedding_target

        return embedding_target(self, name)

    def model_names(self) -> list[tuple[str, str]]:
        """(name, owner) for /v1/models: the servable base models and every tuned model whose
        name answers (its default version is deployed); never a spelling a request used."""
        from tunelab.models.bases import operator_bases
        from tunelab.models.catalog import CATALOG
        from tunelab.registry.aliases import DEFAULT, aliased_version
        from tunelab.registry.endpoints import is_deployed
        from tunelab.registry.models import list_models

        # The generative catalog (the embedding catalog answers /v1/embeddings only, so chat
        # clients such as the Studio's playground do not offer it) and the operator's bases.
        names = [(n, "tunelab") for n in sorted(set(CATALOG) | set(operator_bases()))]
        db = self.services.db
        for m in list_models(db):
            default = aliased_version(db, m.name, DEFAULT)
            if default is not None and is_deployed(db, default.id):
                names.append((m.name, "user"))
        return names

    def check_deployable(self, version) -> None:
        """Before a deploy: raise ValueError (with the reasons) for a version this server's
        engine cannot serve. The builtin engine serves every registered adapter."""
        if self.backend is not None:
            self.backend.check_deployable(version)

    def deployments_changed(self) -> None:
        """After a deploy or undeploy: an engine server loads the adapters now deployed and
        unloads the others (the builtin engine loads adapters on demand)."""
        if self.backend is not None:
            self.backend.sync()

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
        if self.backend is not None:
            self.backend.close()


def check_deployed(services: Services, resolved) -> None:
    """A tuned version is served only while deployed on its endpoint (an endpoint id resolves
    to a deployed version already). Raises ModelNotFound saying how to deploy it."""
    from tunelab.registry.endpoints import is_deployed
    from tunelab.registry.resolve import ModelNotFound

    if resolved.kind != "tuned" or is_deployed(services.db, resolved.version.id):
        return
    v = resolved.version
    raise ModelNotFound(
        f"{resolved.ref!r} names {v.model_name}@{v.version}, which is not deployed: deploy it "
        f"(POST /v1/endpoints with model {v.model_name}@{v.version}, or `tunelab models deploy "
        f"{v.model_name}@{v.version}`) to serve it"
    )


def _is_embedding_base(name: str) -> bool:
    """An encoder (the embedding catalog, or an encoder folder the operator added) is served
    by /v1/embeddings only, never loaded as a causal LM."""
    from tunelab.embeddings.model import EMBEDDING_CATALOG, is_embedding_model
    from tunelab.models.bases import operator_bases

    added = operator_bases()
    return is_embedding_model(added[name]) if name in added else name in EMBEDDING_CATALOG
