"""Generating from a base model or a tuned adapter, with the prompt rendered exactly as in
training (the tokenizer and chat template saved in the adapter bundle): the parameters of a
request, loading a model for ``predict`` and ``eval``, and one prompt's answer through the
model runner (``runner.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from tunelab.bundle import read_tuning_config, verify_adapter_bundle
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model


class GenerationParams(BaseModel):
    """Sampling parameters; defaults are those of Vertex AI Studio's text playground."""

    temperature: float = Field(0.2, ge=0, le=2, description="0 means greedy decoding.")
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int = Field(40, ge=0, le=1000, description="0 disables top-k filtering.")
    max_output_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = Field(None, description="Fixes sampling for reproducible outputs.")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    adapter_dir: Path | None

    @cached_property
    def runner(self):
        """The model runner over this model (its adapter, if any, on every row)."""
        from tunelab.serving.runner import ModelRunner

        return ModelRunner(self.model, self.tokenizer)


def load_for_inference(
    base_ref: str | None = None,
    adapter_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """A base model, optionally with a tuned adapter on top (then its own base is used), on
    ``device``."""
    if adapter_dir is not None:
        verify_adapter_bundle(adapter_dir)  # safetensors only, every file as the manifest says
        tuning = read_tuning_config(adapter_dir)
        base = resolve_model(tuning["base_model"])
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_causal_lm(base.path), adapter_dir)
        tokenizer = load_tokenizer(adapter_dir)
        name = str(adapter_dir)
    else:
        base = resolve_model(base_ref or "")
        model, tokenizer, name = load_causal_lm(base.path), load_tokenizer(base.path), base.ref
    model.eval().to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, adapter_dir=adapter_dir)


def generate(loaded: LoadedModel, messages: list[dict[str, str]], params: GenerationParams) -> str:
    """The model's response to one chat prompt, through the model runner that every face
    generates with (so ``tunelab predict`` answers as the server does)."""
    from tunelab.serving.runner import RowGroup

    runner = loaded.runner
    result = runner.generate([RowGroup(runner.check_prompt(runner.render(messages)), params)])
    return result[0].texts[0].strip()


def as_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """A plain prompt becomes one user turn, exactly as ``input_text`` does in training."""
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
