"""Serving embedding models: which encoder answers a name, kept in a small LRU cache.

A name (or endpoint id) is an embedding model when it resolves to a registered version tuned with
method ``embedding``, or to a base embedding model (the catalog's ``all-minilm-l6-v2``, a
sentence-transformers folder, a tuned embedding bundle folder). Anything else is left to the
generative engine (:mod:`tunelab.serving.pool`), so an encoder is never loaded as a causal LM.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.embeddings.data import passage_text
from tunelab.embeddings.model import EMBEDDING_CATALOG, Encoder, is_embedding_model, load_encoder

logger = logging.getLogger(__name__)

MAX_LOADED_ENCODERS = 4
"""Encoders kept in memory (~90 MB each for MiniLM); the least recently used is dropped."""

TASK_TYPES = (
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)
"""Vertex's task types. The open encoders served here are symmetric (one vector space for
queries and passages), so a task type selects no prompt; it is validated, and a ``title`` is
put before a RETRIEVAL_DOCUMENT's content exactly as corpus passages were during tuning."""


class InvalidEmbeddingRequest(ValueError):
    pass


@dataclass
class EmbeddingTarget:
    name: str
    """The name the client used."""
    model_id: str
    """The version id of a tuned model, or the base model reference."""
    encoder: Encoder
    lock: threading.Lock


@dataclass
class Embedding:
    values: list[float]
    token_count: int
    truncated: bool


class EncoderCache:
    def __init__(self, size: int = MAX_LOADED_ENCODERS) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Encoder, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], Encoder]) -> tuple[Encoder, threading.Lock]:
        with self._lock:  # one load at a time: two requests must not load the same model twice
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            logger.info("loading embedding model %s for serving", key)
            self._items[key] = (load(), threading.Lock())
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return self._items[key]

    def drop(self, key: str) -> None:
        """Forget an encoder (its version was undeployed); a request using it keeps its copy."""
        with self._lock:
            self._items.pop(key, None)


def embedding_target(pool, name: str) -> EmbeddingTarget | None:
    """The embedding model ``name`` (tuned model, ``model@version``, endpoint id, servable base)
    means, or None when it names a generative model or nothing (the generative path then
    answers, with its not-found error). Resolved by :func:`tunelab.registry.resolve.resolve`.
    A tuned embedding version that is not deployed raises ``ModelNotAvailable`` saying so."""
    from tunelab.models.bases import operator_bases
    from tunelab.registry.resolve import ModelNotFound, resolve

    cache: EncoderCache = pool.__dict__.setdefault("_embedding_encoders", EncoderCache())
    try:
        target = resolve(pool.services, name)
    except ModelNotFound:
        return None
    if target.kind == "tuned":
        if target.method != "embedding":
            return None
        from tunelab.serving.pool import ModelNotAvailable, check_deployed

        try:  # only a deployed version is served
            check_deployed(pool.services, target)
        except ModelNotFound as exc:
            raise ModelNotAvailable(str(exc)) from None
        folder = Path(target.adapter_dir)
        encoder, lock = cache.get(target.version.id, lambda: load_encoder(folder))
        return EmbeddingTarget(name, target.version.id, encoder, lock)
    # A servable base: the embedding catalog by name, an operator's encoder by its folder.
    source = operator_bases().get(name)
    if source is None and name in EMBEDDING_CATALOG:
        source = name
    if source is not None and is_embedding_model(source):
        encoder, lock = cache.get(source, lambda: load_encoder(source))
        return EmbeddingTarget(name, name, encoder, lock)
    return None


def embed(
    target: EmbeddingTarget,
    texts: list[str],
    *,
    task_types: list[str | None] | None = None,
    titles: list[str | None] | None = None,
    dimensions: int | None = None,
    auto_truncate: bool = True,
) -> list[Embedding]:
    """Embed texts with a target's encoder; ``dimensions`` truncates further and renormalises."""
    n = len(texts)
    task_types, titles = task_types or [None] * n, titles or [None] * n
    inputs = []
    for i, (text, task, title) in enumerate(zip(texts, task_types, titles, strict=True)):
        if task is not None and task not in TASK_TYPES:
            raise InvalidEmbeddingRequest(
                f"instances[{i}].task_type: {task!r} is not one of {', '.join(TASK_TYPES)}"
            )
        if title and task not in (None, "RETRIEVAL_DOCUMENT"):
            raise InvalidEmbeddingRequest(
                f"instances[{i}].title: a title is only valid with task_type RETRIEVAL_DOCUMENT"
            )
        inputs.append(passage_text(title, text))
    if dimensions is not None and dimensions < 1:
        raise InvalidEmbeddingRequest("dimensions must be at least 1")
    with target.lock:
        vectors, counts, truncated = target.encoder.encode_with_stats(inputs)
    if not auto_truncate and any(truncated):
        first = truncated.index(True)
        raise InvalidEmbeddingRequest(
            f"input {first} has more than {target.encoder.spec.max_seq_length} tokens and "
            "autoTruncate is false"
        )
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = torch.nn.functional.normalize(vectors[:, :dimensions], dim=-1)
    return [Embedding(v, c, t) for v, c, t in zip(vectors.tolist(), counts, truncated, strict=True)]
