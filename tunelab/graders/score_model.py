"""The ``score_model`` grader: a reward model tuned in TuneLab judges each answer.

The reward model's bundle (LoRA adapter + scalar head, :mod:`tunelab.recipes.reward_model`) is
loaded on its own copy of its base model, in eval mode. Each answer is scored as the reward
model was trained to read it: the prompt rendered with the chat template and generation
header, then the answer as the template renders a model turn (content and end-of-turn token).
The score is sigmoid(reward), so it lies in (0, 1) like the other graders' and a weighted sum
stays meaningful; 0.5 is the reward model's "no preference".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 16


class RewardModelScorer:
    def __init__(self, bundle_dir: Path) -> None:
        from peft import PeftModel

        from tunelab.bundle import read_tuning_config, verify_adapter_bundle
        from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
        from tunelab.models.reward_head import load_head

        verify_adapter_bundle(bundle_dir)  # safetensors only, every file as listed
        base = resolve_model(read_tuning_config(bundle_dir)["base_model"])
        self.tokenizer = load_tokenizer(base.path)
        self.model = PeftModel.from_pretrained(load_causal_lm(base.path), bundle_dir)
        self.model.eval()
        self.head = load_head(bundle_dir)

    def __call__(self, samples: Sequence[str], items: Sequence[dict[str, Any]]) -> list[float]:
        import torch

        from tunelab.data.batching import collate
        from tunelab.data.preference import sequence
        from tunelab.models.reward_head import score

        seqs = [sequence(*self._tokens(s, item)) for s, item in zip(samples, items, strict=True)]
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(seqs), BATCH):
                chunk = seqs[start : start + BATCH]
                ids = collate(chunk, self.tokenizer.pad_token_id).input_ids
                lengths = torch.tensor([len(s.input_ids) for s in chunk])
                out += torch.sigmoid(score(self.model, self.head, ids, lengths)).tolist()
        return out

    def _tokens(self, sample: str, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        from tunelab.data.formats import parse_record
        from tunelab.data.preference import messages_of

        parsed = parse_record(item, 0, "prompt")
        if isinstance(parsed, list):
            raise ValueError(f"score_model: the line is not a prompt: {parsed[0].message}")
        messages = messages_of(parsed.prompt)
        prefix = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        full = self.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": sample}], tokenize=False
        )
        answer = full[len(prefix) :].rstrip() if full.startswith(prefix) else sample
        encode = self.tokenizer
        prompt_ids = encode(prefix, add_special_tokens=False)["input_ids"]
        answer_ids = encode(answer, add_special_tokens=False)["input_ids"]
        return np.asarray(prompt_ids, dtype=np.int64), np.asarray(answer_ids, dtype=np.int64)


def registry_locator(services, *, allow_folder: bool = False):
    """A ``score_model`` reference -> its reward model's bundle, through the one resolver: a
    registered reward model (``reward_model`` method) by NAME or NAME@VERSION; a bundle folder
    only where the operator's own CLI allows it."""
    from tunelab.registry.resolve import ModelNotFound, resolve

    def locate(ref: str) -> Path:
        try:
            target = resolve(services, ref, allow_folder=allow_folder)
        except ModelNotFound as exc:
            raise ValueError(f"score_model: {exc}") from None
        if target.adapter_dir is None or (
            target.version is not None and target.method != "reward_model"
        ):
            raise ValueError(
                f"score_model: {ref!r} is not a reward model (tune one with `tunelab tune rlhf`, "
                "which registers NAME-reward)"
            )
        return Path(target.adapter_dir)

    return locate
