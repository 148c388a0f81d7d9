"""Which number format a training run computes in: fp32, or bf16 mixed precision.

bf16 mixed precision here means what it means on GPUs: the frozen base weights get a bf16 copy
and the blocks' matmuls and activations run in bf16, while the residual stream, the norms'
statistics, rotary and attention (torch's CPU flash attention is slower in bf16), the loss, the
LoRA parameters, their gradients and the optimizer stay fp32.

Whether bf16 pays depends on the CPU, and its flags do not tell: an Intel Xeon with AMX runs
bf16 matmuls at 6-7x its fp32 rate, an AMD Zen 4 (AVX512-BF16) at 2.4x, an Intel Xeon with
that flag but no AMX at 0.6x, and an AVX2-only CPU emulates bf16 at a small fraction
(bench/RESULTS.md has the figures). So ``auto`` measures: a few matmuls at the model's width
in each format, about a tenth of a second, and bf16 only when it is clearly faster. The choice
is made once per run and kept in its checkpoints, so a resumed run computes exactly as it
started.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Literal

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]

BF16_MIN_SPEEDUP = 1.5
"""bf16 adds rounding; ``auto`` takes it only for a clear gain, not for timing noise."""


def resolve_precision(requested: Precision, width: int, device: str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a model whose hidden size is ``width``."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    speedup = bf16_matmul_speedup(width)
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    logger.info("precision auto: bf16 matmuls run %.2fx fp32 here, training in %s", speedup, chosen)
    return chosen


def bf16_matmul_speedup(width: int) -> float:
    """fp32 time / bf16 time of ``F.linear`` at (512, width) x (width, 2 width), best of 3."""
    # Below 512 a matmul is too short to time reliably (and a tiny test model would decide
    # differently from the real ones); above 2048 the probe only gets longer.
    return _measured_speedup(min(max(width, 512), 2048))


@functools.cache  # once per process and width: every run in a process decides alike
def _measured_speedup(width: int, rows: int = 512) -> float:
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(0)  # the probe must not move the global RNG
        x = torch.randn(rows, width, generator=gen).to(dtype)
        w = torch.randn(2 * width, width, generator=gen).to(dtype)
        F.linear(x, w)  # warm-up: first-call dispatch and kernel selection
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            F.linear(x, w)
            best = min(best, time.perf_counter() - start)
        seconds[dtype] = best
    return seconds[torch.float32] / seconds[torch.bfloat16]


MATMUL_ROW_GRANULE = 32
"""Tokens; a batch wastes under this many on dead rows, on average half."""


def matmul_row_multiple(precision: str, device: str = "cpu") -> int:
    """What the token count of a training step's linear layers is rounded up to.

    On a CPU, torch runs bf16 matmuls through oneDNN, which generates (JIT-compiles) a kernel
    for every new shape: ~1.6 ms each, about 30 shapes per step, and ~17 MB kept in its cache
    each time. Batches of varied lengths would make nearly every step pay that, about 10% of the
    step (bench/RESULTS.md). Rounded to a multiple of 32 tokens, a run meets a few dozen shapes
    in all. fp32 matmuls (MKL) and GPUs have no per-shape cost: no rounding there.
    """
    return MATMUL_ROW_GRANULE if precision == "bf16" and device == "cpu" else 1
