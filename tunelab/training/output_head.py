"""Log-probabilities of target tokens through the output head in bf16, accurate where it counts.

Sequence log-probabilities (RLOO's policy and reference, DPO) need, at each of N answer
positions, ``log softmax(W h)[target]`` over the whole vocabulary: an (N, V) matmul with V = 49k
for SmolLM2, the largest matmul of a step. In fp32 it (with its log-softmax) costs ~3x what it
costs in bf16 on a CPU with AMX, and an RLOO step runs it three times (reference, policy
forward, policy backward).

Plain bf16 logits are not good enough: the matmul accumulates in fp32 but hands back bf16, and
a logit of 20 rounded to bf16 is off by up to 0.06, a per-token log-probability error that adds
up over an answer (a KL estimate sums ~30 of them) and biases it. So each row's target logit
``l_t`` is estimated first (one dot product per row) and subtracted *inside* the matmul, before
the result is rounded: ``h`` gets one more column holding ``-l_t`` and ``W`` one more column of
ones, so the matmul returns ``x_v = l_v - l_t``. The softmax is shift-invariant, and the logits
that carry its mass are now small numbers where bf16 rounds finely: the target's is ~0, its
rivals' are the few nats they lead it by (one leading by 8 is off by <= 0.03; logits far below
weigh ``exp(-20)``). The target's probability is read from bf16's softmax (fp32 inside,
rounded once: relative error <= 2^-8, so its log is off by <= 0.004), and the softmax is kept for
the backward, ``d log p_t / dh = W_t - sum_v p_v W_v``.

What is computed is the log-probability under the head's weight rounded to bf16, as the rest of
a bf16 forward computes: policy and reference read the same rounded head, so the KL between them
carries no bias from it. Measured on SmolLM2-135M (120 tokens of text) against the same weights
in fp32: per-token error <= 0.015, summed over the 120 tokens 0.017; against the fp32 weights,
<= 0.02 and 0.04, where plain bf16 logits are off by up to 0.06, and by 0.23 in sum. Forward and
backward over 480 tokens: 0.13 CPU-s against 0.56 in fp32 (one thread).

The fp32 run keeps the plain fp32 head: :meth:`tunelab.training.fast_path.FastPath.output_head`
chooses by the run's precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.training.precision import MATMUL_ROW_GRANULE

_COLUMN_MULTIPLE = 32
"""The augmented width (C + 1) is padded to this: AMX tiles take 32 bf16 columns."""


class _TargetLogprobs(torch.autograd.Function):
    """(N,) fp32 ``log softmax(W h_n)[t_n]`` in bf16 with the target logit shifted to 0."""

    @staticmethod
    def forward(ctx, hidden, targets, augmented, weight):  # noqa: ANN001 - autograd signature
        n, width = hidden.shape
        rows = n + -n % MATMUL_ROW_GRANULE  # oneDNN makes a kernel per shape: few shapes
        h = hidden.to(torch.bfloat16)
        target_rows = weight[targets]  # (N, C) bf16
        shift = (h.float() * target_rows.float()).sum(-1)  # (N,) ~ l_t
        x = h.new_zeros(rows, augmented.shape[1])  # rows past N: zeros, read by nothing
        x[:n, :width] = h
        x[:n, width] = -shift
        logits = F.linear(x, augmented)  # (rows, V) bf16: l_v - l_t, fp32-accumulated, ~0 at t
        probs = torch.softmax(logits, -1)  # fp32 inside, rounded once
        logprobs = probs[:n].gather(1, targets[:, None]).squeeze(1).float().log()
        lost = logprobs == float("-inf")  # p_t below bf16's range: only with l_v - l_t > ~87
        if lost.any():
            exact = logits[:n][lost].float()
            target = exact.gather(1, targets[lost][:, None]).squeeze(1)
            logprobs[lost] = target - exact.logsumexp(-1)
        ctx.save_for_backward(probs, target_rows, weight)
        ctx.hidden_dtype = hidden.dtype
        return logprobs

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        probs, target_rows, weight = ctx.saved_tensors
        n = len(target_rows)
        expected = (probs @ weight)[:n].float()  # (N, C): sum_v p_v W_v
        grad_hidden = (target_rows.float() - expected).mul_(grad[:, None])
        return grad_hidden.to(ctx.hidden_dtype), None, None, None


class Bf16OutputHead:
    """The frozen output head ``head`` (an ``nn.Linear`` without bias), answering
    :meth:`target_logprobs` in bf16 as the module docstring describes; calling it gives the
    head's own (fp32) logits."""

    def __init__(self, head: torch.nn.Linear) -> None:
        if head.bias is not None or head.weight.requires_grad:
            raise ValueError("the bf16 output head needs a frozen head without bias")
        self.head = head
        self._weights: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, C') bf16 ``[W, 1, 0...]`` (C' a multiple of 32) and its first C columns, ``W`` in
        bf16 (a view: the matmul reads it in place as fast). Made once, and again only if the
        head's weight changes (it is frozen)."""
        weight = self.head.weight
        key = (weight.data_ptr(), weight._version, weight.device)
        if self._weights is None or self._weights[0] != key:
            vocab, width = weight.shape
            padded = -(-(width + 1) // _COLUMN_MULTIPLE) * _COLUMN_MULTIPLE
            augmented = torch.zeros(vocab, padded, dtype=torch.bfloat16, device=weight.device)
            augmented[:, :width] = weight.detach()
            augmented[:, width] = 1.0
            self._weights = (key, augmented)
        augmented = self._weights[1]
        return augmented, augmented[:, : weight.shape[1]]

    def target_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) fp32 ``log softmax(W h_n)[targets_n]`` for hidden (N, C), targets (N,)."""
        augmented, rounded = self.weights()
        return _TargetLogprobs.apply(hidden, targets, augmented, rounded)
