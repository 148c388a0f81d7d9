"""Batched generation for evaluation: many prompts through one loaded model.

Prompts are rendered with :func:`tunelab.data.template.prompt_ids`, exactly as training and
``tunelab predict`` render them, then left-padded into batches: a decoder-only model continues
from the last position of each row, so the padding must come before the prompt, and the
attention mask hides it (``generate`` derives position ids from the mask, so a padded row sees
the same positions as the prompt alone). Greedy decoding of a batch therefore gives the same
text as one prompt at a time (tests/evaluation check it), up to float rounding ties.

Batches are formed from prompts sorted by length, longest first: little padding, and the
slowest batch runs first, so an ETA drawn from the first batches errs long rather than short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tunelab.data.template import prompt_ids
from tunelab.serving.generation import GenerationParams, LoadedModel

GenerateProgress = Callable[[int, int], None]
"""Called with (prompts done, total) after each batch."""


@torch.no_grad()
def generate_batched(
    loaded: LoadedModel,
    prompts: Sequence[list[dict[str, str]]],
    params: GenerationParams,
    *,
    batch_size: int = 8,
    progress: GenerateProgress | None = None,
) -> list[str]:
    """The model's response to each prompt (a list of chat messages), in the prompts' order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tokenizer, model = loaded.tokenizer, loaded.model
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    ids = [prompt_ids(tokenizer, messages) for messages in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs = [""] * len(ids)
    sample = params.temperature > 0
    if params.seed is not None:
        torch.manual_seed(params.seed)
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T) 1 = real token
        for r, i in enumerate(rows):
            input_ids[r, width - len(ids[i]) :] = torch.tensor(ids[i])
            attention[r, width - len(ids[i]) :] = 1
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=params.max_output_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=(params.top_k or None) if sample else None,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # (B, T + new); rows that stop early are filled with pad_id
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        for r, i in enumerate(rows):
            outputs[i] = texts[r].strip()
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return outputs
