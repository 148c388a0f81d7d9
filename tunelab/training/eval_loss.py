"""Loss and next-token accuracy on model turns over a whole dataset: the number a validation
step reports, and the reference-output loss/perplexity an evaluation reports."""

from __future__ import annotations

import torch

from tunelab.data.batching import collate
from tunelab.data.template import Encoded
from tunelab.losses.lm import completion_loss
from tunelab.models.device import to_device


@torch.no_grad()
def evaluate(
    model, decoder, head, examples: list[Encoded], batch_size: int, pad_id: int
) -> dict[str, float]:
    """Eval loss (mean cross-entropy per model-turn token) and next-token accuracy."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    loss_sum, correct_sum, count = 0.0, 0, 0
    device = head.weight.device
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = to_device(batch, device)
        hidden = decoder(input_ids=batch.input_ids).last_hidden_state
        loss, correct, n = completion_loss(hidden, head, batch.input_ids, batch.loss_mask)
        loss_sum += loss.item() * n
        correct_sum += int(correct)
        count += n
    return {"eval_loss": loss_sum / max(1, count), "eval_accuracy": correct_sum / max(1, count)}
