"""Many LoRA adapters on one base model: loaded on demand, bounded in memory, least recently
used unloaded first.

The base model is wrapped once in a ``PeftModel``; every adapter is added to that one wrapper
with ``load_adapter`` under a short internal name, so the base weights exist once however many
adapters are loaded. A forward pass chooses an adapter per row with PEFT's mixed-batch argument
``adapter_names=[...]``, where the reserved name ``"__base__"`` means "no adapter" (see
``peft/tuners/lora/layer.py: _mixed_batch_forward``).

The wrapper is created with a tiny inert placeholder adapter (rank 1, ``lora_B`` zero, never
named in a forward pass) because ``PeftModel`` needs at least one adapter config to exist; it
costs a few kilobytes and keeps the base model usable before any real adapter is loaded.

Adapters used by a batch in flight are pinned (a reference count) and never evicted; a load
that would need to evict a pinned adapter raises ``AdapterCacheFull`` and the caller retries
when the batch has moved on.

Only the engine thread calls into ``AdapterCache``; ``check_adapter_folder`` is a pure check
that any thread may call before submitting.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.bundle import MANIFEST

logger = logging.getLogger(__name__)

BASE = "__base__"
"""PEFT's reserved adapter name for rows that use the base model alone."""
PLACEHOLDER = "tunelab_placeholder"
WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter folder cannot be served by this engine (not a bundle, wrong base model...)."""


class AdapterCacheFull(RuntimeError):
    """Loading one more adapter would exceed the bound and every loaded adapter is pinned."""


def check_adapter_folder(folder: Path, base_dir: Path, base_ref: str | None = None) -> None:
    """Refuse, with a message naming the folder, an adapter that this base model cannot serve.

    Accepted: a folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (never a
    pickle) whose base model is ``base_dir``. The base model is read from the bundle's
    ``tuning_config.json`` (``base_model`` reference or ``base_model_path``), or, for a plain
    PEFT folder, from ``adapter_config.json``'s ``base_model_name_or_path``; it matches when
    it names ``base_ref`` or resolves to the same folder as ``base_dir``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {folder} does not exist")
    if not (folder / "adapter_config.json").is_file():
        raise AdapterError(f"{folder} is not a LoRA adapter: it has no adapter_config.json")
    if not (folder / WEIGHTS).is_file():
        raise AdapterError(
            f"{folder} has no {WEIGHTS}; adapters are loaded from safetensors only, never pickle"
        )
    claims: list[str] = []
    tuning = folder / "tuning_config.json"
    if tuning.is_file():
        if not (folder / MANIFEST).is_file():
            raise AdapterError(f"{folder} is an incomplete adapter bundle: it has no {MANIFEST}")
        config = json.loads(tuning.read_text())
        claims = [c for c in (config.get("base_model"), config.get("base_model_path")) if c]
    else:
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("base_model_name_or_path"):
            claims = [config["base_model_name_or_path"]]
    if not claims:
        raise AdapterError(f"{folder} does not say which base model it was tuned from")
    if not any(_same_base(c, base_dir, base_ref) for c in claims):
        raise AdapterError(
            f"adapter {folder} was tuned from base model {claims[0]!r}, but this engine serves "
            f"{base_ref or base_dir!s}; serve it from an engine of its own base model"
        )


def _same_base(claim: str, base_dir: Path, base_ref: str | None) -> bool:
    if base_ref is not None and claim == base_ref:
        return True
    path = Path(claim).expanduser()
    return path.is_dir() and path.resolve() == Path(base_dir).resolve()


@dataclass
class _Entry:
    name: str
    """The adapter's name inside the PeftModel (``a0``, ``a1``... keys may hold any characters)."""
    folder: Path
    nbytes: int
    pins: int = 0


class AdapterCache:
    """LoRA adapters on one ``PeftModel``, least recently used evicted beyond the bounds.

    ``ensure(key, folder)`` returns the adapter's internal name, loading it if needed; ``pin``
    and ``unpin`` bracket its use by a batch in flight. Bounds: at most ``max_adapters`` loaded,
    and at most ``max_bytes`` of adapter tensors (``None``: no byte bound).
    """

    def __init__(
        self, base_model: torch.nn.Module, *, max_adapters: int = 8, max_bytes: int | None = None
    ):
        from peft import LoraConfig, get_peft_model

        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        placeholder = LoraConfig(r=1, target_modules="all-linear", init_lora_weights=True)
        self.model = get_peft_model(base_model, placeholder, adapter_name=PLACEHOLDER)
        self.model.eval()
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # key -> entry, LRU first
        self._counter = 0
        self.loads = 0
        self.evictions = 0

    # -- queries --------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def keys(self) -> list[str]:
        """Loaded adapter keys, least recently used first."""
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def name_of(self, key: str) -> str:
        return self._entries[key].name

    def pins(self, key: str) -> int:
        return self._entries[key].pins if key in self._entries else 0

    # -- loading and eviction -------------------------------------------------------------
    def ensure(self, key: str, folder: Path) -> str:
        """The internal adapter name for ``key``, loading ``folder`` first if it is not loaded.

        Marks the adapter most recently used. Raises ``AdapterCacheFull`` when room cannot be
        made because the adapters that would have to go are pinned, ``AdapterError`` when the
        adapter alone exceeds ``max_bytes`` or its files cannot be loaded.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry.name
        folder = Path(folder)
        estimate = (folder / WEIGHTS).stat().st_size if (folder / WEIGHTS).is_file() else 0
        if self.max_bytes is not None and estimate > self.max_bytes:
            raise AdapterError(
                f"adapter {folder} needs ~{estimate} bytes, more than the engine's bound "
                f"of {self.max_bytes} bytes for all adapters"
            )
        self._make_room(estimate)
        name = f"a{self._counter}"
        self._counter += 1
        try:
            self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        except Exception as exc:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise AdapterError(f"could not load adapter {folder}: {exc}") from exc
        nbytes = self._adapter_bytes(name)
        self._entries[key] = _Entry(name=name, folder=folder, nbytes=nbytes)
        self.loads += 1
        logger.info(
            "loaded adapter %s from %s as %s (%.1f MB; %d loaded)",
            key,
            folder,
            name,
            nbytes / 1e6,
            len(self._entries),
        )
        return name

    def pin(self, key: str) -> None:
        self._entries[key].pins += 1

    def unpin(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    def evict(self, key: str) -> None:
        """Unload one adapter now (it must not be pinned)."""
        entry = self._entries[key]
        if entry.pins:
            raise RuntimeError(f"adapter {key} is in use by {entry.pins} batch row(s)")
        del self._entries[key]
        self.model.delete_adapter(entry.name)
        self.evictions += 1
        logger.info("unloaded adapter %s (%s)", key, entry.name)

    def _make_room(self, incoming_bytes: int) -> None:
        def over() -> bool:
            count = len(self._entries) + 1 > self.max_adapters
            size = self.max_bytes is not None and self.nbytes + incoming_bytes > self.max_bytes
            return count or size

        while over():
            victim = next((k for k, e in self._entries.items() if e.pins == 0), None)
            if victim is None:
                raise AdapterCacheFull(
                    f"all {len(self._entries)} loaded adapters are in use; retry when a batch ends"
                )
            self.evict(victim)

    def _adapter_bytes(self, name: str) -> int:
        marker = f".{name}."
        return sum(
            p.numel() * p.element_size() for n, p in self.model.named_parameters() if marker in n
        )
