"""``--precision auto``: which serving precision (``quantize.py``) this machine is fastest in.

A CPU is timed once: one linear layer of the model's shape, in fp32, bf16 (prepacked, as
``bf16`` serves it), int8 and int4 weight-only, at 1 to 16 rows (~0.5 s). The decision
(:func:`decide`) reads those timings with margins, so that timing noise does not pick a format:

- bf16 at 16 rows at least :data:`BF16_MIN_SPEEDUP` x faster than fp32 (AMX, AVX512-BF16):
  batches in bf16, else ``fp32``;
- the few-row format: int4 where it is at least :data:`INT4_MIN_SPEEDUP` x faster than int8 at
  1 row (a single stream is bound by streaming the weights' bytes, and int4 streams half of
  int8's), else int8;
- that format at 1 row at least :data:`INT8_MIN_SPEEDUP` x faster than the best float format:
  ``int4+bf16`` or ``int8+bf16``, with bf16 from the first row count where it measured
  :data:`DENSE_MARGIN` x faster (plain ``int8`` if int8 wins up to 16 rows; ``int4+bf16``
  then keeps bf16 for prefills only); otherwise ``bf16``.

Why ``auto`` may pick 4 bits: on the quality guard of bench/bench_serving.py (a tuned adapter
on the example test set, greedy) ``int4+bf16`` answered as fp32 on all 80 examples, as
``int8+bf16`` and ``bf16`` did, and on 40 chat texts its top-1 next token agreed with fp32's
more often than per-channel int8's (``quantize.INT4_GROUP``); the output head stays int8.

Why a cache: timed at every start, the row count from which ``int8+bf16`` switches to bf16
came out 4 on one run and 8 on the next on the same machine (the two are within noise of each
other there), so two servers on one machine served differently. The timings are kept in
``TUNELAB_HOME/precision_probe.json``, per CPU (model name, flags, count), torch version and
layer shape, and reused: one machine, one answer. Delete the file (or its entry) to measure
again, e.g. after a measurement on a busy machine.

The probe multiplies by several copies of the layer in turn (more bytes than a core's L2), so
each product streams its weight from memory as a decode step does; one weight multiplied again
and again stays in L2 and makes int8's byte savings invisible. It times the engine thread's CPU
(``time.thread_time``, the median of interleaved repeats), which other processes' load
disturbs far less than wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tunelab.serving import prepacked
from tunelab.serving.quantize import CHOICES, DEQUANTIZE_ROWS, Int4Linear, Int8Linear
from tunelab.serving.threads import one_thread

logger = logging.getLogger(__name__)

Timings = dict[tuple[str, int], float]
"""Seconds of one product per (format, rows): formats ``fp32``, ``bf16``, ``int8`` and, where
the layer's shape allows int4 groups, ``int4``."""

PROBE_ROWS = (1, 2, 4, 8, 16)
"""Row counts the probe times: one stream up to a full default batch."""

BF16_MIN_SPEEDUP = 1.5
"""``auto`` serves bf16 matmuls only for a clear gain over fp32 at a batch of 16 rows (the
AMX or AVX512-BF16 case), not for timing noise: bf16 changes greedy text (quality is checked
by bench/bench_serving.py)."""

INT8_MIN_SPEEDUP = 1.05
"""``auto`` adds the int8 weights when one row's product is faster with them than with the best
float format beyond timing noise: the machine is bound by streaming weight bytes. A small gain
suffices: with its bf16 copy prepacked, ``int8+bf16`` holds fewer bytes than ``bf16`` (1 + 2
a weight against 2 + 2) and runs batches as fast. Measured on a Xeon with AMX, one thread, a
576 -> 1536 layer: int8 1.13-1.15x prepacked bf16 at 1 row over four probes (1.3 before
prepacking was a threshold the measurement sat on), a whole decode step 1.14-1.32x."""

INT4_MIN_SPEEDUP = 1.1
"""``auto`` serves int4 rather than int8 few-row products only for a clear gain at 1 row: the
two compute with different weights, so noise must not decide between them. Measured on a Xeon
with AMX, one thread, 150 distinct 1536 x 576 weights in turn: int8 139 us, int4 64 us."""

DENSE_MARGIN = 1.1
"""``int8+bf16`` switches to bf16 products from the first row count where bf16 is this much
faster than int8, not merely as fast: near the crossing the two are within noise."""

PROBE_BYTES = 24 << 20
"""The probe's copies of the layer hold at least this many bytes in bf16: more than a core's
L2 (2 MB on the Xeons measured), so every product reads its weight from memory."""

PROBE_COPIES = 32
"""At most this many copies: a small layer's products are bound by their per-call cost, not
by bytes, whatever their number (and the probe must stay well under a second)."""

CACHE_FILE = "precision_probe.json"
PROBE_VERSION = 3
"""Part of the cache key: a change to what the probe measures invalidates older entries."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    """One of ``quantize.PRECISIONS``."""
    dense_rows: int | None = None
    """``int8+bf16``, ``int4+bf16``: the measured row count from which bf16 is faster (None:
    the default)."""
    reason: str = ""


def choose_precision(
    requested: str,
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    *,
    measure: Callable[[int, int], Timings] | None = None,
    cache: bool = True,
) -> PrecisionChoice:
    """``requested`` as it is, or for ``auto`` what this machine serves ``model`` fastest in.

    On a CPU, ``auto`` times the model's largest linear layer apart from the output head with
    ``measure`` (default :func:`time_products`), reusing this machine's cached timings when
    ``cache``, and decides with :func:`decide`. On CUDA it is bf16 where the GPU supports it
    (no int8 kernel is used there).
    """
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, reason="requested")
    if torch.device(device).type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return PrecisionChoice("bf16" if bf16 else "fp32", reason="CUDA")
    shape = probe_shape(model)
    timings, source = probe_timings(*shape, measure=measure or time_products, cache=cache)
    choice = decide(timings)
    reason = f"layer {shape[0]}->{shape[1]}, {source}: {choice.reason}"
    return PrecisionChoice(choice.precision, choice.dense_rows, reason)


def decide(t: Timings) -> PrecisionChoice:
    """The precision the timings ``t`` (every format at every row count of
    :data:`PROBE_ROWS`; ``int4`` optional) call for; see the module doc."""
    few = "int8"
    if ("int4", 1) in t and t["int4", 1] * INT4_MIN_SPEEDUP <= t["int8", 1]:
        few = "int4"
    batch_gain = t["fp32", 16] / t["bf16", 16]
    stream_gain = min(t["fp32", 1], t["bf16", 1]) / t[few, 1]
    timings = ", ".join(f"{fmt}x{rows} {s * 1e6:.0f}us" for (fmt, rows), s in sorted(t.items()))
    reason = (
        f"bf16 {batch_gain:.2f}x fp32 at 16 rows, {few} {stream_gain:.2f}x the best float at "
        f"1 row ({timings})"
    )
    if batch_gain < BF16_MIN_SPEEDUP:
        return PrecisionChoice("fp32", reason=reason)
    if stream_gain < INT8_MIN_SPEEDUP:
        return PrecisionChoice("bf16", reason=reason)
    dense_rows = next((r for r in PROBE_ROWS if t["bf16", r] * DENSE_MARGIN <= t[few, r]), None)
    if few == "int4":  # no plain int4: the bf16 copy serves prefills at least
        return PrecisionChoice("int4+bf16", dense_rows or DEQUANTIZE_ROWS, reason)
    if dense_rows is None:  # int8 wins even at 16 rows: no use for a bf16 copy
        return PrecisionChoice("int8", reason=reason)
    return PrecisionChoice("int8+bf16", dense_rows, reason)


def probe_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(in, out) of the model's largest linear layer apart from the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shapes = [
        (m.in_features, m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    ]
    return max(shapes or [(1024, 2048)], key=lambda s: s[0] * s[1])


def machine_key(n_in: int, n_out: int) -> str:
    """What the cached timings of an (n_in, n_out) layer hold for: this CPU (model name, a
    hash of its feature flags, the CPU count), this torch, this probe."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name.startswith("cpu "):
                name = "cpu " + line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:  # not Linux: the name and count only
        pass
    return (
        f"{name} flags:{flags or '-'} x{os.cpu_count()} torch {torch.__version__} "
        f"probe v{PROBE_VERSION} {n_in}x{n_out}"
    )


def probe_timings(
    n_in: int, n_out: int, *, measure: Callable[[int, int], Timings], cache: bool = True
) -> tuple[Timings, str]:
    """This machine's timings of an (n_in, n_out) layer, and where they came from: the cache
    (``TUNELAB_HOME/precision_probe.json``) or ``measure``, whose answer is then cached."""
    from tunelab.config import get_settings

    path = get_settings().home / CACHE_FILE
    key = machine_key(n_in, n_out)
    stored: dict = {}
    if cache:
        try:
            stored = json.loads(path.read_text())
            entry = stored.get(key)
            if entry is not None:
                return _from_json(entry), f"timings cached in {path}"
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("precision probe cache %s unreadable (%s): measuring again", path, e)
            stored = {}
    timings = measure(n_in, n_out)
    if cache:
        from tunelab.training.atomic import write_json

        stored[key] = {f"{fmt} {rows}": s for (fmt, rows), s in timings.items()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, stored)
        except OSError as e:  # a read-only home: measured every start, as before
            logger.warning("precision probe not cached in %s (%s)", path, e)
    return timings, "measured now"


def _from_json(entry: dict) -> Timings:
    out: Timings = {}
    for k, s in entry.items():
        fmt, rows = k.split(" ")
        out[fmt, int(rows)] = float(s)
    missing = {(f, r) for f in ("fp32", "bf16", "int8") for r in PROBE_ROWS} - set(out)
    if missing:
        raise KeyError(f"no timing for {sorted(missing)[0]}")
    return out


def time_products(n_in: int, n_out: int, repeats: int = 7) -> Timings:
    """Median thread-CPU seconds of one (rows, n_in) x (n_in, n_out) product per format and row
    count, on one thread (the engine's decode steps are timed per thread as well), over copies
    of the weight taken in turn so that each product reads its weight from memory."""
    gen = torch.Generator().manual_seed(0)  # the probe must not move the global RNG
    copies = min(PROBE_COPIES, max(2, math.ceil(PROBE_BYTES / (2 * n_in * n_out))))
    fp32, bf16, int8, int4 = [], [], [], []
    for _ in range(copies):
        layer = torch.nn.Linear(n_in, n_out, bias=False)
        with torch.no_grad():
            layer.weight.normal_(0, n_in**-0.5, generator=gen)
        fp32.append(layer.weight.detach())
        w16 = layer.weight.detach().bfloat16()
        bf16.append(prepacked.pack(w16) if prepacked.available() else w16)
        int8.append(Int8Linear(layer, dense_rows=1 << 30))  # always the int8 kernel
        if Int4Linear.fits(layer):
            int4.append(Int4Linear(layer, dense_rows=1 << 30))
    if prepacked.available():

        def bf16_product(x, w):
            return prepacked.packed_linear(x, w, None)
    else:
        bf16_product = F.linear

    samples: dict[tuple[str, int], list[float]] = {}
    with one_thread(), torch.inference_mode():
        inputs = {rows: torch.randn(rows, n_in, generator=gen) for rows in PROBE_ROWS}
        calls = {
            "fp32": lambda x: [F.linear(x, w) for w in fp32],
            "bf16": lambda x: [bf16_product(x, w) for w in bf16],
            "int8": lambda x: [q(x) for q in int8],
        }
        if int4:
            calls["int4"] = lambda x: [q(x) for q in int4]
        for repeat in range(repeats + 1):  # the first round warms up: not counted
            for rows, x in inputs.items():
                for fmt, call in calls.items():
                    arg = x if fmt == "fp32" else x.bfloat16()
                    start = time.thread_time()
                    call(arg)
                    if repeat:
                        samples.setdefault((fmt, rows), []).append(
                            (time.thread_time() - start) / copies
                        )
    return {k: statistics.median(v) for k, v in samples.items()}
