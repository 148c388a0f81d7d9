"""Whether vLLM can serve a registered adapter, and if not, why.

vLLM's multi-LoRA kernels are compiled for a fixed set of ranks and refuse adapters outside it
when ``POST /v1/load_lora_adapter`` is called (or, worse, at the first request). Saying so when
a version is registered and shown lets a user pick a servable ``adapter_size`` before tuning
rather than find out at deploy time. The rules are vLLM's own (``vllm/lora/peft_helper.py``
and ``LoRAConfig``): rank in :data:`VLLM_LORA_RANKS` and at most the server's
``--max-lora-rank``, no DoRA, no bias terms, no ``modules_to_save`` beyond a classifier head,
and a generative (not reward or embedding) model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM's punica kernels accept (``LoRAConfig.max_lora_rank`` choices)."""

DEFAULT_MAX_LORA_RANK = 16
"""vLLM's own default for ``--max-lora-rank``; TuneLab starts vLLM with the same unless told."""

_CLASSIFIER_HEADS = frozenset({"score", "classifier", "lm_head"})
"""Module names vLLM accepts in ``modules_to_save`` (a sequence-classification head)."""

_NOT_GENERATIVE = {
    "reward_model": "a reward model scores answers with a scalar head; it does not generate",
    "embedding": "an embedding model is served by /v1/embeddings, not by a text engine",
}


@dataclass(frozen=True)
class VllmVerdict:
    servable: bool
    reasons: list[str] = field(default_factory=list)
    """Why not, one reason per rule broken (empty when servable)."""
    rank: int | None = None
    min_max_lora_rank: int | None = None
    """The smallest ``--max-lora-rank`` a vLLM server needs to load this adapter."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_adapter_config(
    config: dict[str, Any], *, method: str | None = None, max_lora_rank: int | None = None
) -> VllmVerdict:
    """The verdict for a PEFT ``adapter_config.json`` (as a dict). ``max_lora_rank`` is the
    server's setting; None checks only what no server setting can fix."""
    reasons: list[str] = []
    if method in _NOT_GENERATIVE:
        reasons.append(_NOT_GENERATIVE[method])
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        reasons.append(f"peft_type {peft_type} is not LoRA; vLLM serves LoRA adapters only")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool):
        reasons.append(f"adapter_config.json has no integer rank 'r' (got {rank!r})")
        rank = None
    elif rank not in VLLM_LORA_RANKS:
        servable_ranks = ", ".join(str(r) for r in VLLM_LORA_RANKS)
        reasons.append(
            f"rank {rank} is not one vLLM serves ({servable_ranks}); tune with adapter_size "
            "1, 8, 16 or 32"
        )
    elif max_lora_rank is not None and rank > max_lora_rank:
        reasons.append(f"rank {rank} is above the server's --max-lora-rank {max_lora_rank}")
    if config.get("use_dora"):
        reasons.append("DoRA adapters (use_dora) are not supported by vLLM")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        reasons.append(f"bias={bias!r}: vLLM serves LoRA adapters without bias terms")
    extra = sorted(set(config.get("modules_to_save") or ()) - _CLASSIFIER_HEADS)
    if extra:
        reasons.append(
            f"modules_to_save {extra}: vLLM loads no fully trained modules beyond a classifier head"
        )
    needed = rank if rank in VLLM_LORA_RANKS else None
    return VllmVerdict(not reasons, reasons, rank, needed)


def check_adapter_folder(
    folder: Path, *, method: str | None = None, max_lora_rank: int | None = None
) -> VllmVerdict:
    """The verdict for an adapter bundle (or PEFT folder) on disk."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return VllmVerdict(False, [f"adapter_config.json cannot be read: {exc}"])
    if not isinstance(config, dict):
        return VllmVerdict(False, ["adapter_config.json is not a JSON object"])
    return check_adapter_config(config, method=method, max_lora_rank=max_lora_rank)


def check_version(services, version, *, max_lora_rank: int | None = None) -> VllmVerdict:
    """The verdict for a registered model version, from its stored adapter bundle."""
    from tunelab.registry.models import adapter_artifact

    folder = services.artifacts.local_path(adapter_artifact(services.db, version).uri)
    return check_adapter_folder(folder, method=version.method, max_lora_rank=max_lora_rank)
