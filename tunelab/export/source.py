"""What an export starts from: a registered model version, its adapter bundle, its base model,
and the adapter's LoRA factors read by the serving engine's own checked reader.

Reading the factors through :func:`tunelab.serving.adapters.read_adapter` (safetensors only,
PEFT variants the engine cannot apply refused by name, every shape checked against the base
model's linear layers) means an export holds exactly the adapter the server serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.bundle import read_manifest, read_tuning_config
from tunelab.models import ResolvedModel, resolve_model
from tunelab.serving.adapters import CONFIG, check_adapter_folder, read_adapter


class ExportError(ValueError):
    """An export cannot be made as asked (unknown format, unsupported architecture...)."""


@dataclass(frozen=True)
class LoraFactors:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA)


@dataclass(frozen=True)
class ExportSource:
    name: str
    version: int
    method: str
    bundle: Path
    """The registered adapter bundle (read only)."""
    base: ResolvedModel
    tuning_config: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def is_embedding(self) -> bool:
        return self.method == "embedding"

    def adapter_config(self) -> dict[str, Any]:
        return json.loads((self.bundle / CONFIG).read_text())


def source_for(services, ref: str) -> ExportSource:
    """``name`` or ``name@version`` of a registered tuned model (ModelNotRegistered if none)."""
    from tunelab.registry.models import adapter_artifact, get_version

    version = get_version(services.db, ref)
    bundle = services.artifacts.local_path(adapter_artifact(services.db, version).uri)
    read_manifest(bundle)  # a complete bundle, never a half-written folder
    tuning = read_tuning_config(bundle)
    if version.method == "embedding":
        from tunelab.embeddings.model import resolve_embedding_model

        base_ref, base_path = resolve_embedding_model(version.base_model)
        base = ResolvedModel(ref=base_ref, path=base_path, source="local")
    else:
        base = resolve_model(version.base_model)
        check_adapter_folder(bundle, base.path, base.ref)
    return ExportSource(
        name=version.model_name,
        version=version.version,
        method=version.method,
        bundle=bundle,
        base=base,
        tuning_config=tuning,
    )


def read_lora(
    bundle: Path, model: torch.nn.Module, label: str | None = None
) -> dict[str, LoraFactors]:
    """The adapter's factors per module name of ``model`` (e.g. ``model.layers.0.self_attn.
    q_proj``), in fp32, read and checked exactly as the serving engine reads them."""
    # On a model already wrapped by PEFT, each adapted layer is a LoRA module holding the
    # original nn.Linear as ``base_layer``: the reader checks shapes against that Linear.
    # The engine's reader: the bundle verified against its manifest, then every factor checked.
    factors = read_adapter(Path(bundle), _linear_layers(model), label or Path(bundle).name)
    return {
        name: LoraFactors(A=f.A.float(), B=f.B.float(), scale=float(f.scale))
        for name, f in factors.items()
    }


def _linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        key = name.removesuffix(".base_layer")
        if isinstance(module, torch.nn.Linear) or key not in modules:
            modules[key] = module
    return modules


@torch.no_grad()
def merge_lora(model: torch.nn.Module, factors: dict[str, LoraFactors]) -> None:
    """W <- W + s B A for every adapted linear layer, in place (computed in fp32)."""
    modules = dict(model.named_modules())
    for name, f in factors.items():
        weight = modules[name].weight
        merged = weight.float() + f.scale * (f.B @ f.A)  # (out, in)
        weight.copy_(merged.to(weight.dtype))
