"""Helpers for the serving tests: LoRA adapter bundles with random weights, PEFT's own
greedy generation as the reference the engine must reproduce, and a tiny model that rambles."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rambling_model(model_dir: Path) -> torch.nn.Module:
    """The (tiny) model at ``model_dir`` in fp32 with wider random weights: it rambles in
    varied tokens, never ending, so every decode step of a test runs."""
    from tunelab.models import load_causal_lm

    model = load_causal_lm(model_dir).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return model


def make_adapter_bundle(
    base_dir: Path,
    folder: Path,
    seed: int,
    *,
    rank: int = 8,
    targets: list[str] | None = None,
    std: float = 0.5,
    base_model: str | None = None,
    lora_alpha: int | None = None,
    **lora_options,
) -> Path:
    """A LoRA adapter for ``base_dir`` with random non-zero ``lora_B`` (so it changes the
    output), saved by PEFT in a folder with the bundle's tuning_config.json and manifest.json."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_causal_lm

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha or 2 * rank,
        target_modules=targets or TARGETS,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        **lora_options,
    )
    model = get_peft_model(load_causal_lm(base_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tuning_config.json").write_text(
        json.dumps({"method": "sft", "base_model": base_model or str(base_dir)})
    )
    return rehash(folder)


def rehash(folder: Path) -> Path:
    """Write the manifest with every file's sha256, as the recipes write it (adapters are loaded
    only after tunelab.bundle.verify_adapter_bundle); a test that edits a file calls it again."""
    from tunelab.bundle import file_hashes

    manifest = {"kind": "lora_adapter", "files": file_hashes(folder)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def peft_greedy(base_dir: Path, adapter: Path | None, prompt: list[int], max_new: int) -> list[int]:
    """Greedy tokens of HF ``generate`` on a PeftModel with ``adapter`` active (or the bare base
    model), end-of-sequence excluded."""
    from peft import PeftModel

    from tunelab.models import load_causal_lm

    model = load_causal_lm(base_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    ids = torch.tensor([prompt])
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=min(eos),
        )
    tokens = out[0, ids.shape[1] :].tolist()
    return [t for t in tokens if t not in eos]
