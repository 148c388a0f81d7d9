"""The training forward every LoRA recipe runs through: fused LoRA layers, bf16 mixed precision
where the CPU is fast at it, and a batch's shared prompt prefix computed once.

:meth:`tunelab.training.run.TrainingRun.fast_path` makes one per run (the precision is chosen
once and kept in the checkpoints). A recipe then asks it for the final hidden states of a
training batch (:meth:`FastPath.hidden`) and computes its own loss from them: the completion
loss (SFT), sequence log-probabilities (DPO, RLOO) or the reward head's scores (reward model).
Models the fused forward does not cover train through PEFT's forward, in bf16 by autocast.
Passes without a gradient inside a run (reference log-probabilities, reward scores) run
through it too (:meth:`FastPath.hidden_no_grad`), so they compute as the steps do.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from tunelab.training.fused_lora import fuse_lora_for_training, is_fused
from tunelab.training.output_head import Bf16OutputHead
from tunelab.training.precision import matmul_row_multiple
from tunelab.training.prefix_sharing import (
    can_share_prefix,
    decoder_hidden,
    decoder_hidden_at,
)

logger = logging.getLogger(__name__)


@dataclass
class FastPath:
    model: torch.nn.Module
    precision: str
    """``fp32`` or ``bf16``."""
    fused: bool
    share_prefix: bool
    row_multiple: int
    _bf16_head: Bf16OutputHead | None = field(default=None, init=False, repr=False)

    @classmethod
    def install(cls, model: torch.nn.Module, precision: str) -> FastPath:
        """Switch ``model`` (a PEFT LoRA model) to the fused forward where it can be."""
        fused = fuse_lora_for_training(model, _compute_dtype(precision))
        device = next(model.parameters()).device.type
        return cls(
            model, precision, fused, can_share_prefix(model), matmul_row_multiple(precision, device)
        )

    def output_head(self):
        """The model's output head for sequence log-probabilities
        (tunelab.losses.rl.sequence_logprobs): in a bf16 run, one that computes them in bf16
        with logits rounded near the target's (tunelab.training.output_head); the fp32 head
        otherwise, or if the head is trained or has a bias."""
        head = self.model.get_output_embeddings()
        if self.precision != "bf16" or head.bias is not None or head.weight.requires_grad:
            return head
        if self._bf16_head is None or self._bf16_head.head is not head:
            self._bf16_head = Bf16OutputHead(head)
        return self._bf16_head

    def autocast(self):
        """bf16 autocast for a model the fused forward does not cover; a no-op otherwise."""
        if self.precision != "bf16" or self.fused:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16)

    def hidden(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Final hidden states (B, T - offset, C) from ``offset`` on: see
        :func:`tunelab.training.prefix_sharing.decoder_hidden`. fp32 whatever the precision."""
        self._check_fused()
        with self.autocast():
            hidden, offset = decoder_hidden(
                self.model, input_ids, loss_mask, self.share_prefix, self.row_multiple
            )
        return hidden.float(), offset

    def hidden_at(
        self, input_ids: torch.Tensor, loss_mask: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """(B, C) final hidden states of each row's token ``at[b]`` (at or before its last
        training target), fp32, as :meth:`hidden` computes them; packed, the last layer computes
        those tokens only (:func:`tunelab.training.prefix_sharing.decoder_hidden_at`)."""
        self._check_fused()
        with self.autocast():
            hidden = decoder_hidden_at(
                self.model, input_ids, loss_mask, at, self.share_prefix, self.row_multiple
            )
        return hidden.float()

    @torch.no_grad()
    def hidden_no_grad(
        self, input_ids: torch.Tensor, loss_mask: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """:meth:`hidden` without a graph, computed as a training step computes it (precision
        and packing): for the passes inside a run whose numbers meet the steps' own, the
        reference log-probabilities (DPO, RLOO) and the reward model's scores (RLOO)."""
        with self._as_a_step_computes():
            return self.hidden(input_ids, loss_mask)

    @torch.no_grad()
    def hidden_at_no_grad(
        self, input_ids: torch.Tensor, loss_mask: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`hidden_at` without a graph, computed as a training step computes it: the
        reward model's scores in the RL stage, read at one token a row, as the reward model's
        own steps read them (its last layer computes those tokens only)."""
        with self._as_a_step_computes():
            return self.hidden_at(input_ids, loss_mask, at)

    @contextlib.contextmanager
    def _as_a_step_computes(self):
        training = self.model.training
        # Train mode is what makes the fused norms hand the blocks the compute dtype (eval
        # mode computes fp32, as evaluation must); the fused path has no dropout it would
        # switch on. PEFT's forward (a model the fused path does not cover) stays in eval mode.
        if training != self.fused:  # Module.train walks every module: only when it changes
            self.model.train(self.fused)
        try:
            yield
        finally:
            if self.model.training != training:
                self.model.train(training)

    def _check_fused(self) -> None:
        if self.fused and not is_fused(self.model):
            # Without this a run would silently train through PEFT's forward, in fp32 whatever
            # its precision says (transformers' kernelization on .train() did exactly that).
            logger.warning("the fused LoRA forward was replaced by the model's own; reinstalling")
            fuse_lora_for_training(self.model, _compute_dtype(self.precision))


def _compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32
