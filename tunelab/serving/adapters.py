"""Many LoRA adapters on one base model: loaded on demand, bounded in memory, least recently
used unloaded first, and mixed freely within one batch.

Each LoRA adapter adds to a linear layer ``y = W x`` the low-rank term ``s · B (A x)`` (Hu et
al. 2021, "LoRA"), with A: (r, in), B: (out, r) and s = alpha / r (alpha / sqrt(r) with
rsLoRA). Every targeted layer keeps the factors of all loaded adapters side by side, A_cat:
(R, in) and B_cat: (out, R) with R the sum of their ranks (each adapter's own A and B are
views into them, so the weights are held once), and the layer's ``forward``, wrapped on that
module (:meth:`_LayerLora.install`; not a hook: torch's hook call path costs ~5 us more a
call), adds the term for the adapter each row selected, for a prefill and a decode step
alike, in two products whatever the mix of adapters:

    h = (A_u x) * mask       # (B, T, R_u); mask: the row's scale s on its adapter's block, else 0
    y = y + B_u h            # (B, T, out), accumulated in place

where A_u, B_u are the columns from the first to the last block of the adapters the batch uses
(a batch of one adapter multiplies by its own rank, not by every loaded adapter's). The masks
are built once per batch composition and kept while the same rows come back step after step.

What it costs, and why this shape (SmolLM2-135M, 16 rows over 8 rank-8 adapters, one thread,
Xeon with AMX; ``bench/bench_lora_step.py`` and bench/RESULTS.md): the ~210 hooked products of
a decode step are tiny, (16, 576) x (576, 64), and there oneDNN's bf16 matmul costs ~25 us a
call whatever the size while MKL's fp32 sgemm takes 3-9 us, so the factors are held in fp32 on
a CPU (:func:`lora_dtype`) even for a bf16 or int8 base model, and a decode step's products run
on one thread (on two they took twice the CPU time). A prefill's products are large enough for
bf16 (AMX) to win: from :data:`MANY_ROWS` rows they run in the activations' dtype. Rows
without adapter get exactly ``y``, and a batch without adapters runs the bare base model.
Sibling layers called on one input (q/k/v, gate/up: :data:`SHARED_INPUTS`) hold their A
factors in one tensor, and a decode step multiplies that input once for all of them
(:class:`_SharedInput`). In place, the cost is mostly per call (~15 us each, ~1,000 a step),
not arithmetic: grouping the rows by adapter to skip the mask's zeros (gather, two batched
products over each row's own block, scatter: 1/8 of the arithmetic at 8 adapters) measured
5-8 ms a step slower than the masked products (bench/RESULTS.md, 2026-12-06; measured again
in the real step: 28 ms of hooks against 23).

Folding B into the base product (:meth:`_LayerLora.fold`). Where the base layer is a bf16 weight
prepacked for oneDNN (``bf16``, and ``int8+bf16`` from its dense rows; ``prepacked.py``), a
decode step does not run an fp32 B product and a mixed-dtype add after the base product: a
decode step turns the input into ``[x | h]`` (h = the masked A product over all of the
layer's adapter columns, in bf16 by oneDNN on A packed once: :data:`PACKED_A`; a group's once
for its members) and the layer multiplies it by ``[W | B_cat]``, packed
once after each load or eviction (~0.25 s for SmolLM2-135M's 210 layers on one thread, at the
first selection of adapter rows after them: :meth:`AdapterCache.select`), in one AMX product on
the engine's threads. Measured (bench_lora_step.py, 16
rows over 8 adapters, one thread, thread CPU, loaded machine): a decode step 80 -> 72 ms
against 55-57 ms base only (int8+bf16 and bf16 alike) with the A product still in fp32, and
with it in bf16 (in one process, best of 3-4 rounds) bf16 85.2 -> 74.9 -> 68.4 ms against
58.0 base, int8+bf16 78.5 -> 71.2 -> 63.8 against 53.2 (0.83-0.85x). The fp32 A products had
been ~9 ms of the remaining ~11 ms of hooks: at 77 us a call in the real step against ~30 us
for the packed bf16 ones, the fp32 factors' bytes (38 MB a step on the A side) being read
from memory; the base layers' extra K columns (R = 64 beside 576 or 1536) cost little on AMX. Why the cost was calls and conversions more than bytes: with
every layer's factors made the same tensors (1/30 of the bytes, hot in cache), the real step was only ~5 ms
faster of the ~26 ms the LoRA added (the A products, whose factors were then read in fp32,
turned out to be where bytes mattered). Why bf16 here is safe: A, h and B lose bits beyond
bf16's 8 (~0.4% of each), accumulated in fp32 by the kernel, on a LoRA term that is itself
small next to the base output; the term stays within 2% of the fp32 factors' (tests/serving/
test_lora_fold.py), and logits within a fraction of the adapter's own effect of PEFT's fp32
ones. Cost: the packed ``[W | B_cat]`` is one more bf16 copy of each targeted weight (~+210 MB
for SmolLM2-135M with adapters on every projection), the packed A ~+20 MB for 8 adapters. Greedy fp32 serving never folds (its
layers are not prepacked), nor do the int8 kernel's few rows, or a batch whose adapters span
under half of a layer's columns; but the packed copies are made after loads whatever the batch
(the memory is held once adapters serve in these modes). Prefills fold too
(:data:`FOLD_PREFILL`): the same packed operands at any row count. A row without adapter in a
folded batch gets ``[x | 0] [W | B_cat]^T``: its base output up to the longer product's
rounding (exactly, in the decode steps measured; ~1e-2 at a prefill's row counts, where
oneDNN blocks K differently), as any change of batch shape already moves a bf16 product's last
bits.

A lean decode step (``fast_decode.LeanDecoder``) does not call the folded layers' modules: it
asks :meth:`AdapterCache.decode_folds` once per selection for each block's inputs' folded
products (:class:`FoldedInput`: the A product, the mask, and each layer's ``[x | h]`` product,
the same operations on the same operands as :meth:`_LayerLora.fold`, bit for bit) and calls
them directly, without the ~15 us of checks, lookups and module calls a layer took.

Where the cost stands (2026-12-06, same command, thread CPU, one thread, 16 rows over 8
adapters, loaded machine): a mixed decode step ~62-66 ms against ~54 base (0.82-0.86x, bf16 and
int8+bf16 alike). Profiled then (int8+bf16, one thread): of the ~12 ms a mixed step added, the
120 packed A products ~4 ms (34 us a call in model order, ~17 us of it per call whatever the
size), B's extra K columns in the base products ~1.7 ms, the 210 ``[x | h]`` concatenations
~0.6 ms, the masks ~0.4 ms, and ~4-5 ms the Python of the per-layer path (``forward``,
``fold``, the group lookups): the direct folds took the step 75.5 -> 65.8 ms against 57-58 base
(0.76 -> 0.89x, bench_lora_step.py --against the code before, best of 2 rounds, loaded
machine), and the folded prefill 332 -> 289 ms against 252-262 base. Not kept: int8 A factors
(``_weight_int8pack_mm`` took 58 us for a (16, 576) x (576, 192) product against 25-30 us for
the packed bf16 one), q/k/v as one folded product (the zero blocks of a fused ``[W | B]``
cost as much as the two calls they save, and it would be another copy of the weights), the
LoRA mask as oneDNN's ``mul`` post-op (36 us a call against 21 for the product and ``mul_``).
What is left is near what the bytes allow: the 8 adapters' factors are ~39 MB in bf16
(A ~19, B ~20) read every step beside the base model's ~270 MB, ~14% more. Until then the first
folded step after loads also packed every layer's operands (~265 ms of thread CPU instead of
~60) and a serving benchmark whose warm-up ran one row per adapter (never folding) paid that
inside its measured mixed run: ~0.25 s of a ~2.5 s run, most of bf16's 0.75x there. Prefills
(16 prompts of ~20 tokens) cost ~30% more with 8 adapters unfolded (the ``addmm_`` of B into
the bf16 output ~0.3 ms a call), ~10-15% folded.

Why not PEFT's own mixed batches (``adapter_names=[...]``): they gather and multiply per
adapter per layer and register hooks on every module at each call; on this model, batch 16,
8 adapters, a PEFT decode step took 0.53 s against 0.32 s for the base rows (0.6x), and the
PEFT wrappers slowed base-only batches by 20%.

Adapters are still PEFT's files and semantics (``adapter_config.json`` +
``adapter_model.safetensors``: target modules, rank and alpha patterns, rsLoRA); the tests
check that the tokens match PEFT's own ``generate``. Variants this runtime does not implement
(DoRA, LoRA biases, ``modules_to_save``, embedding targets...) are refused by name rather
than served wrongly.

Adapters used by a batch in flight are pinned (a reference count per row) and never evicted;
a load that would have to evict a pinned adapter raises ``AdapterCacheFull`` and the caller
retries once the batch has moved on.

Only the engine thread calls into ``AdapterCache``; ``check_adapter_folder`` is a pure check
that any thread may call before submitting.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.bundle import BundleIntegrityError, NotABundleError, verify_adapter_bundle
from tunelab.serving.prepacked import PACKED_MAX_ROWS, pack, packed_linear
from tunelab.serving.threads import one_thread

logger = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_WEIGHT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter folder cannot be served by this engine (not a bundle, wrong base model...)."""


class AdapterCacheFull(RuntimeError):
    """Loading one more adapter would exceed the bound and every loaded adapter is pinned."""


def check_adapter_folder(
    folder: Path, base_dir: Path, base_ref: str | None = None, label: str | None = None
) -> None:
    """Refuse, with a message naming the adapter, an adapter that this base model cannot serve.

    Accepted: a bundle that passes :func:`tunelab.bundle.verify_adapter_bundle` (safetensors
    only, every file as its manifest lists it) with ``adapter_config.json`` and
    ``adapter_model.safetensors``, whose base model is ``base_dir``. The base model is read from
    the bundle's ``tuning_config.json`` (``base_model`` reference or ``base_model_path``); it
    matches when it names ``base_ref`` or resolves to the same folder as ``base_dir``.
    ``label`` names the adapter in messages (a server shows no folder); default the folder.
    """
    folder = Path(folder)
    where = label or f"adapter {folder}"
    try:
        verified_bundle(folder, where)
    except (BundleIntegrityError, NotABundleError) as exc:
        raise AdapterError(str(exc)) from None
    if not (folder / CONFIG).is_file():
        raise AdapterError(f"{where} is not a LoRA adapter: it has no {CONFIG}")
    if not (folder / WEIGHTS).is_file():
        raise AdapterError(
            f"{where} has no {WEIGHTS}; adapters are loaded from safetensors only, never pickle"
        )
    tuning = folder / "tuning_config.json"
    if tuning.is_file():
        config = json.loads(tuning.read_text())
        claims = [c for c in (config.get("base_model"), config.get("base_model_path")) if c]
    else:
        config = json.loads((folder / CONFIG).read_text())
        claims = [c for c in [config.get("base_model_name_or_path")] if c]
    if not claims:
        raise AdapterError(f"{where} does not say which base model it was tuned from")
    if not any(_same_base(c, base_dir, base_ref) for c in claims):
        served = f" ({base_ref})" if base_ref and not _looks_like_path(base_ref) else ""
        claim = "another base model" if _looks_like_path(claims[0]) else f"base model {claims[0]!r}"
        raise AdapterError(
            f"{where} was tuned from {claim}, not the one this engine serves{served}; serve it "
            "from an engine of its own base model"
        )


def _looks_like_path(ref: str) -> bool:
    """Folders are not named in messages a server may show (hub ids and names are)."""
    return ref.startswith(("/", "~", ".")) or ref.count("/") > 1 or "\\" in ref


_verified: dict[tuple, bool] = {}
"""Bundles verified at request time, by their files' (name, size, mtime, inode): a request
does not re-hash an unchanged adapter; loading it (``AdapterCache.ensure``) always does."""


def verified_bundle(folder: Path, label: str) -> None:
    """:func:`verify_adapter_bundle`, remembered while the folder's files are unchanged."""
    stamp = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            st = p.stat()
            stamp.append((p.name, st.st_size, st.st_mtime_ns, st.st_ino))
    key = (str(folder), tuple(stamp))
    if key not in _verified:
        verify_adapter_bundle(folder, label)
        if len(_verified) > 1024:
            _verified.clear()
        _verified[key] = True


def _same_base(claim: str, base_dir: Path, base_ref: str | None) -> bool:
    if base_ref is not None and claim == base_ref:
        return True
    path = Path(claim).expanduser()
    return path.is_dir() and path.resolve() == Path(base_dir).resolve()


@dataclass
class _Factors:
    """One adapter's LoRA factors for one linear layer."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float


FOLD_B = True
"""Fold decode steps' B products into the base product on prepacked bf16 layers
(:meth:`_LayerLora.fold`); False: the fp32 B product and add after it."""

PACKED_A = True
"""Folded decode steps multiply A in bf16 by oneDNN, on A packed once (half the bytes of the
fp32 factors, no conversions of x and h); False: the fp32 A product, converted to bf16."""

FOLD_A_ONE_THREAD = True
"""A folded decode step's A products run on one thread (:func:`one_thread`) whatever the
engine's count; False: on the engine's threads. One thread measured ~2x less CPU for these
small products on two threads (and no gain in thread CPU), but they are memory-bound (~19 MB
of packed A factors a step at 8 adapters) and run serially beside a base product that two
threads share: the wall-time trade-off at two threads is for a quiet machine to measure
(``bench/bench_lora_step.py --against . --flag FOLD_A_ONE_THREAD=0 --threads 2 --wall``)."""

FOLD_PREFILL = True
"""Prefills fold too (:meth:`_LayerLora.fold` at any row count): ``[x | h] [W | B_cat]^T`` on
the packed operands the decode steps use, instead of the base product on the plain weight
plus a bf16 A product, mask and ``addmm_`` of B into the output. Measured (SmolLM2-135M,
int8+bf16, one thread, the 210 hooked layers of a prefill of 16 prompts of ~22 tokens over 8
adapters, in model order): 136 -> 103 ms against 89 ms for the base products alone; the
``addmm_`` of B into a bf16 output was ~0.3 ms a call. False: the masked products after the
base product (:data:`MANY_ROWS`)."""

DIRECT_FOLDS = True
"""A lean decode step (``fast_decode.LeanDecoder``) calls the folded products directly
(:meth:`AdapterCache.decode_folds`) instead of through each layer's module and
:meth:`_LayerLora.forward`; False: through the modules (the same operations)."""

MANY_ROWS = 64
"""LoRA products of at least this many rows (prefills) run in the model's dtype when it is not
the factors' (bf16 activations, fp32 factors), on all threads: measured (one thread, Xeon with
AMX, 64 adapter columns) fp32 and bf16 cost the same at 64 rows, bf16 is 1.5-7x faster at
128-320 rows and fp32 2-4x faster at 16. Fewer rows (decode steps): fp32, one thread."""


def _decode_rows(rows: int) -> bool:
    """Whether a product of ``rows`` rows is a decode step's for the fold: few enough for the
    packed product and under :data:`MANY_ROWS` (what :meth:`_LayerLora.fold` folds without
    :data:`FOLD_PREFILL`, and what :meth:`AdapterCache.decode_folds` calls directly)."""
    return rows <= PACKED_MAX_ROWS and rows < MANY_ROWS


def lora_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the adapter factors are held and multiplied in.

    On a CPU, fp32 whatever the base model's dtype: the LoRA products are tiny ((16, 576) x
    (576, 64) in a decode step), and there oneDNN's bf16 matmul costs ~25 us a call whatever
    the size, while MKL's fp32 sgemm takes 3-9 us (one thread, Xeon with AMX; ~200 such
    products per decode step). On a GPU, the model's dtype.
    """
    if torch.device(device).type == "cpu":
        return torch.float32
    return model_dtype


class _LayerLora:
    """The LoRA factors of every loaded adapter that targets one linear layer, side by side,
    and the forward (:meth:`install`) that applies them to a mixed batch."""

    def __init__(self, owner: AdapterCache, module: torch.nn.Linear):
        self.owner = owner
        self.module = module
        self.factors: dict[str, _Factors] = {}
        # Stored transposed and contiguous: x @ At and h @ Bt are the fastest forms of these
        # skinny products on CPU (1.5x faster than F.linear's transposed views here); in the
        # cache's ``lora_dtype`` (fp32 on a CPU, see AdapterCache).
        like = dict(dtype=owner.lora_dtype, device=module.weight.device)
        self.At = torch.zeros((module.in_features, 0), **like)  # (in, R): A_cat^T
        self.Bt = torch.zeros((0, module.out_features), **like)  # (R, out): B_cat^T
        self.blocks: dict[str, tuple[int, int, float]] = {}  # key -> (offset, rank, scale)
        self.layout: tuple[tuple[str, int, float], ...] = ()
        """(key, rank, scale) in block order: a batch's mask depends only on it."""
        self._work: tuple[int, tuple | None] | None = None
        """(the cache's selection version, (At, Bt, mask) of the selected rows, or None)."""
        self.group: _SharedInput | None = None
        """The layers called on the same input as this one (q/k/v, gate/up), whose A factors
        are one tensor and multiplied at once; None: on its own."""
        self.group_cols = (0, 0)
        """This layer's columns in the group's A: (offset, width)."""
        self.foldable = (
            FOLD_B
            and getattr(module, "packed", None) is not None
            and module.weight.dtype != owner.lora_dtype
            and module.weight.device.type == "cpu"
        )
        """Decode steps fold the B product into the base product (:meth:`fold`): a layer
        whose bf16 weight is prepacked for oneDNN (``prepacked.py``, ``quantize.py``)."""
        self._folded_for: torch.Tensor | None = None  # the Bt that module.lora_packed packs
        self._packed_A: tuple | None = None  # (the At it packs, At^T in bf16 packed)
        self._low: tuple | None = None
        """(dtype, At, Bt) in the activations' dtype for prefills (:meth:`low_factors`)."""
        self._full_masks: tuple | None = None  # (version, _Masks or None): a lone fold's
        self._alone: tuple = ()  # ((layout, 0),): the members of a lone layer's mask

    def rebuild(self) -> None:
        """Concatenate the factors again (after a load or an eviction); each adapter's factors
        become views into the concatenation, so the weights are held once."""
        keys = list(self.factors)
        if keys:
            self.At = torch.cat([self.factors[k].A.t() for k in keys], dim=1).contiguous()
            self.Bt = torch.cat([self.factors[k].B.t() for k in keys], dim=0).contiguous()
        else:
            self.At, self.Bt = self.At[:, :0], self.Bt[:0]
        self.group, self.group_cols = None, (0, 0)  # the cache groups the siblings again
        if self.foldable:  # packed again at the next decode step that folds (not per load)
            self.module.lora_packed, self._folded_for = None, None
        self.blocks, at = {}, 0
        for k in keys:
            f = self.factors[k]
            r = f.A.shape[0]
            self.blocks[k] = (at, r, f.scale)
            at += r
        self.layout = tuple((k, r, s) for k, (_, r, s) in self.blocks.items())
        self._alone = ((self.layout, 0),)
        self.rebind()

    def rebind(self) -> None:
        """Point each adapter's factors at its block of ``At`` and ``Bt`` again (after they
        were rebuilt, or moved into a group's tensor)."""
        for k, (at, r, _) in self.blocks.items():
            f = self.factors[k]
            f.A, f.B = self.At[:, at : at + r].t(), self.Bt[at : at + r].t()
        self._work = self._low = None  # the prefills' converted factors are of the old ones

    def low_factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(At, Bt)`` in ``dtype`` (a bf16 model's prefills, :data:`MANY_ROWS`), converted
        once per load or eviction instead of at every prefill's call (2 conversions of the
        layer's factors a call, ~420 a prefill); dropped by :meth:`rebind`. Held: half the
        fp32 factors' bytes (~39 MB for 8 rank-8 adapters on SmolLM2-135M's projections)."""
        low = self._low
        if low is None or low[0] != dtype:
            low = self._low = (dtype, self.At.to(dtype), self.Bt.to(dtype))
        return low[1], low[2]

    def prepare(self) -> None:
        """Pack now what a folded decode step multiplies (``[W | B_cat]``, and the A factors:
        this layer's or its group's), if a load or an eviction made it stale: called by
        :meth:`AdapterCache.select` at the first forward with adapters after loads, so that
        the cost (~0.25 s of one thread for SmolLM2-135M's 210 layers) is paid by the batch
        that loaded them, not by the next decode step that folds (measured: a mixed decode
        step 265 ms of thread CPU instead of ~60 at the first fold after loads)."""
        if not self.foldable or not self.blocks:
            return
        self._pack_fold()
        dtype = self.module.weight.dtype
        if PACKED_A:
            if self.group is not None:
                self.group.packed_A(dtype)
            else:
                self._lone_packed_A(dtype)

    def _pack_fold(self) -> None:
        """``module.lora_packed``: ``[W | B_cat]`` packed, after each load or eviction."""
        if self._folded_for is not self.Bt:
            module = self.module
            weight = torch.cat([module.weight, self.Bt.t().to(module.weight.dtype)], dim=1)
            module.lora_packed = pack(weight.contiguous())
            self._folded_for = self.Bt

    def _lone_packed_A(self, dtype: torch.dtype) -> torch.Tensor:
        """This layer's A factors, ``At^T`` in ``dtype``, packed (a layer without group)."""
        if self._packed_A is None or self._packed_A[0] is not self.At:
            self._packed_A = (self.At, pack(self.At.t().to(dtype).contiguous()))
        return self._packed_A[1]

    def fold(self, module, args):
        """Before the product (a pre-hook's signature): for a decode step of a prepacked bf16
        layer, the input becomes
        ``[x | h]`` with ``h = (x A) * mask`` over all of this layer's adapter columns, and
        the layer multiplies it by its weight packed as ``[W | B_cat]`` (``lora_packed``):
        ``y = x W^T + h B^T`` in one oneDNN product, instead of an fp32 B product and a
        mixed-dtype add after the base product (see the module doc). None: no fold."""
        owner = self.owner
        if owner._rows is None or not self.blocks or not self.foldable:
            return None
        x = args[0]
        rows = x.numel() // x.shape[-1]
        decode = _decode_rows(rows)
        if (
            (not decode and not FOLD_PREFILL)
            or rows < getattr(module, "dense_rows", 1)  # int8+bf16: the int8 kernel's rows
            or x.dtype != module.weight.dtype
            or x.dim() != 3
        ):
            return None
        if FOLD_A_ONE_THREAD and decode:  # the A product; the folded one runs on all threads
            with one_thread():
                h = self._full_h(x)  # (B, T, R) in the activations' dtype, or None
        else:
            h = self._full_h(x)
        if h is None:
            return None
        if self._folded_for is not self.Bt:  # not prepared (select() packs after loads)
            self._pack_fold()
        return (torch.cat([x, h], dim=-1),)

    def _full_h(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(x A_cat) * mask`` over all of this layer's columns, 0 on the adapters no row
        uses, in ``x``'s dtype (bf16); None when the batch's adapters span under half of the
        columns (then the masked products of the used columns only, in :meth:`__call__`).
        With :data:`PACKED_A` the product is a oneDNN bf16 one on A packed once (a group's
        once for its members), else fp32 on the fp32 factors and converted."""
        owner = self.owner
        if self.group is not None:
            h = self.group.product(owner, x, x.dtype)
            if h is None:
                return None
            at, width = self.group_cols
            return h[..., at : at + width]
        full = self._full_masks
        if full is None or full[0] != owner._version:  # a layout's hash is not cached
            full = self._full_masks = (owner._version, owner._columns_masks(self._alone, self.At))
        masks = full[1]
        if masks is None:
            return None
        if PACKED_A:
            packed = self._lone_packed_A(x.dtype)
            return packed_linear(x, packed, None).mul_(masks.low(x.dtype))
        mask = masks.mask
        h = torch.mm(x.reshape(-1, x.shape[-1]).to(self.At.dtype), self.At)
        return h.view(x.shape[0], x.shape[1], -1).mul_(mask).to(x.dtype)

    def install(self) -> None:
        """Route the layer's calls through :meth:`forward`: its ``forward`` becomes, on this
        module only, the class's ``forward`` with the LoRA term around it. Why not forward
        hooks: a module with hooks takes torch's slow call path, ~5 us more a call (measured:
        a k_proj call of a folded decode step 51 -> 46 us), ~1 ms of a 16-row decode step's
        210 calls; the hooks' semantics are kept (:meth:`fold` before, ``__call__`` after)."""
        module = self.module
        self._base_forward = type(module).forward
        module.forward = self.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``x`` with each selected row's LoRA term: folded into the
        base product (:meth:`fold`) or added after it (``__call__``)."""
        module = self.module
        if self.foldable:
            folded = self.fold(module, (x,))
            if folded is not None:
                return self._base_forward(module, folded[0])
        out = self._base_forward(module, x)
        self(module, (x,), out)  # adds in place
        return out

    def __call__(self, module, args, output):
        owner = self.owner
        if owner._rows is None or not self.blocks:
            return None
        if args[0].shape[-1] != module.in_features:  # folded into the base product (fold)
            return None
        work = self._work
        if work is None or work[0] != owner._version:  # first call since the rows changed
            plan = owner._plan_for(self.layout)
            if plan is not None:
                lo, hi, mask = plan  # the used blocks are columns lo:hi; mask (B, 1, hi - lo)
                plan = (self.At[:, lo:hi], self.Bt[lo:hi], mask, lo)  # (in, r), (r, out)
            work = self._work = (owner._version, plan)
        if work[1] is None:  # no row uses an adapter on this layer
            return None
        At, Bt, mask, lo = work[1]
        x = args[0]  # (B, T, in)
        out2 = output.view(-1, output.shape[-1])  # (N, out), N = B * T
        if out2.shape[0] >= MANY_ROWS:  # a prefill
            if out2.dtype != At.dtype:  # bf16 activations: bf16 products (AMX) beat fp32 ones
                At, Bt = self.low_factors(out2.dtype)
                hi = lo + mask.shape[-1]
                At, Bt = At[:, lo:hi], Bt[lo:hi]
                mask = owner._plan_low(self.layout, out2.dtype)
            _add_lora(x, out2, At, Bt, mask)
            return output
        with one_thread():  # a decode step's products are too small to share between threads
            h = None if self.group is None else self.group.product(owner, x)
            if h is not None:  # this layer's used columns of the shared product, masked
                at = self.group_cols[0] + lo
                h2 = h.view(out2.shape[0], -1)[:, at : at + Bt.shape[0]]  # a strided view
                _add_product(out2, h2, Bt)
            else:
                _add_lora(x, out2, At, Bt, mask)
        return output


def _add_lora(
    x: torch.Tensor, out2: torch.Tensor, At: torch.Tensor, Bt: torch.Tensor, mask: torch.Tensor
) -> None:
    """``out2 += ((x At) * mask) Bt`` in place: x (B, T, in), out2 (B * T, out), At (in, r),
    Bt (r, out), mask (B, 1, r); the products in At's dtype."""
    x2 = x.reshape(-1, x.shape[-1]).to(At.dtype)  # (N, in)
    h = torch.mm(x2, At).view(x.shape[0], -1, At.shape[1])  # (B, T, r)
    h.mul_(mask)  # each row keeps its own adapter's block, times its scale
    _add_product(out2, h.view(out2.shape[0], -1), Bt)


def _add_product(out2: torch.Tensor, h2: torch.Tensor, Bt: torch.Tensor) -> None:
    """``out2 += h2 Bt`` in place, h2 (N, r) in Bt's dtype, out2 (N, out) in the model's."""
    if out2.dtype == h2.dtype:
        out2.addmm_(h2, Bt)  # (N, out), in place
    else:
        out2.add_(torch.mm(h2, Bt))


SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling linear layers that Llama-family blocks (llama, mistral, qwen2; transformers' modules
and :class:`~tunelab.serving.fast_decode.LeanDecoder` alike) call on one input tensor: their
LoRA A products become one product (:class:`_SharedInput`)."""


class _SharedInput:
    """Layers called on the same input whose adapters are the same (in the same order): their
    A factors side by side in one tensor, ``[A_q^T | A_k^T | A_v^T]`` (in, R_q + R_k + R_v),
    of which each layer's ``At`` is a view, so a decode step multiplies its input once for all
    of them: ``h = (x A_group) * mask``, kept for the next sibling called on the same tensor.

    Why: a decode step's LoRA cost is mostly per-call work, not arithmetic (SmolLM2-135M, 16
    rows over 8 adapters: grouping rows by adapter to skip the masked zeros made it slower,
    bench/RESULTS.md); this removes a conversion, an A product and a mask multiply for k, v and
    up in every block (9 of 35 calls a block). The shared product covers every loaded adapter's
    columns (the unused ones masked to 0; each layer's B product still takes only its used
    columns), so it is used when the batch's adapters span at least half of them; else each
    layer multiplies its own used columns."""

    def __init__(self, members: list[_LayerLora]):
        self.members = members
        self.A = torch.cat([m.At for m in members], dim=1)  # (in, sum R)
        at = 0
        for m in members:
            width = m.At.shape[1]
            m.At, m.group, m.group_cols = self.A[:, at : at + width], self, (at, width)
            m.rebind()
            at += width
        self._mask: tuple[int, torch.Tensor | None] | None = None  # (version, mask or None)
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (x, version, h)
        self._converted: tuple | None = None  # (h, dtype, h in dtype)
        self._packed_A: tuple | None = None  # (dtype, A^T in it packed) (PACKED_A)
        self._last_low: tuple | None = None  # (x, version, bf16 h)

    def product(
        self, owner: AdapterCache, x: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """``(x A_group) * mask`` (B, T, sum R) for the selected rows, computed once per input
        tensor; None when the shared product does not pay (:func:`_columns_mask`). ``dtype``:
        the product converted to it (once for all members: the folded B products' input)."""
        if PACKED_A and dtype is not None and dtype != self.A.dtype:
            return self._packed_product(owner, x, dtype)
        h = self._product(owner, x)
        if h is None or dtype is None or dtype == h.dtype:
            return h
        converted = self._converted
        if converted is None or converted[0] is not h or converted[1] != dtype:
            converted = self._converted = (h, dtype, h.to(dtype))
        return converted[2]

    def _packed_product(
        self, owner: AdapterCache, x: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The masked product in ``dtype`` (bf16) by oneDNN on A packed once (``PACKED_A``)."""
        version = owner._version
        last = self._last_low
        if last is not None and last[0] is x and last[1] == version:
            return last[2]
        masks = self._current_masks(owner, x)
        if masks is None:
            return None
        h = packed_linear(x, self.packed_A(dtype), None).mul_(masks.low(dtype))
        self._last_low = (x, version, h)
        return h

    def packed_A(self, dtype: torch.dtype) -> torch.Tensor:  # noqa: N802 - A as in the paper
        """``A^T`` in ``dtype``, packed for oneDNN once (the group is made again after each
        load or eviction, so this never goes stale)."""
        if self._packed_A is None or self._packed_A[0] != dtype:
            self._packed_A = (dtype, pack(self.A.t().to(dtype).contiguous()))
        return self._packed_A[1]

    def _current_masks(self, owner: AdapterCache, x: torch.Tensor) -> _Masks | None:
        """The masks of the rows selected now (built once per selection and shared by the
        groups of the same layouts), or None when the shared product does not pay
        (:func:`_columns_mask`) or ``x`` is not (B, T, in)."""
        if self._mask is None or self._mask[0] != owner._version:
            members = tuple((m.layout, m.group_cols[0]) for m in self.members)
            self._mask = (owner._version, owner._columns_masks(members, self.A))
        masks = self._mask[1]
        return None if masks is None or x.dim() != 3 else masks

    def _product(self, owner: AdapterCache, x: torch.Tensor) -> torch.Tensor | None:
        version = owner._version
        last = self._last
        if last is not None and last[0] is x and last[1] == version:
            return last[2]
        masks = self._current_masks(owner, x)
        if masks is None:
            return None
        h = torch.mm(x.reshape(-1, x.shape[-1]).to(self.A.dtype), self.A)
        h = h.view(x.shape[0], x.shape[1], -1).mul_(masks.mask)
        # Holding x keeps its id from being reused by another tensor while the entry lives.
        self._last = (x, version, h)
        return h


_LINEAR = getattr(getattr(torch.ops.mkldnn, "_linear_pointwise", None), "default", None)
"""oneDNN's packed bf16 product, the overload itself (``prepacked.packed_linear`` without the
overload lookup of each call)."""


class FoldedInput:
    """A folded decode step's products for the layers called on one input (a group's siblings,
    or one layer), for the rows selected: ``h = (x A) * mask`` once, then each layer's
    ``[x | h_layer] [W | B_cat]^T``; the operations :meth:`_LayerLora.fold` and the layer's
    ``forward`` run, in the same order on the same packed operands (so the same outputs),
    without their per-call checks, lookups and module calls (~15 us a layer, ~3 ms of a
    16-row decode step's 210 layers). Made by :meth:`AdapterCache.decode_folds`."""

    __slots__ = ("A", "mask", "members")

    def __init__(self, A: torch.Tensor, mask: torch.Tensor, members: list[tuple]):  # noqa: N803
        self.A = A  # A^T of the members' adapters, packed: (sum R, in)
        self.mask = mask  # (B, 1, sum R) in the activations' dtype
        self.members = members  # per layer: (packed [W | B_cat], bias, first, end column of h)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, 1, in) -> each member's output (B, 1, out), LoRA term included."""
        if FOLD_A_ONE_THREAD:
            with one_thread():
                h = _LINEAR(x, self.A, None, "none", [], "").mul_(self.mask)  # (B, 1, sum R)
        else:
            h = _LINEAR(x, self.A, None, "none", [], "").mul_(self.mask)
        return [
            _LINEAR(torch.cat([x, h[..., at:end]], dim=-1), w, bias, "none", [], "")
            for w, bias, at, end in self.members
        ]


class _ModuleCalls:
    """The layers called one by one on the input (what does not fold as a whole)."""

    __slots__ = ("modules",)

    def __init__(self, modules: tuple[torch.nn.Module, ...]):
        self.modules = modules

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self.modules]


class _Masks:
    """A (B, 1, R) mask (:func:`_columns_mask`) and its conversions, made once a selection."""

    __slots__ = ("mask", "_low")

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self._low: tuple[torch.dtype, torch.Tensor] | None = None

    def low(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask in ``dtype`` (a bf16 A product's)."""
        if self._low is None or self._low[0] != dtype:
            self._low = (dtype, self.mask.to(dtype))
        return self._low[1]


def _columns_mask(
    owner: AdapterCache, members: tuple[tuple[tuple, int], ...], A: torch.Tensor
) -> torch.Tensor | None:
    """The (B, 1, R) mask over all of ``A``'s columns for the selected rows: each member's
    (layout, first column in A) block holds its rows' scales on their adapter's columns, 0
    elsewhere. None when a member has no used columns or the used columns are under half of
    A's (then a product over all of them would mostly multiply by adapters no row uses, e.g.
    one stream's adapter among eight loaded)."""
    plans = [owner._plan_for(layout) for layout, _ in members]
    if any(p is None for p in plans):
        return None
    if 2 * sum(hi - lo for lo, hi, _ in plans) < A.shape[1]:
        return None
    mask = torch.zeros((len(owner._rows), 1, A.shape[1]), dtype=A.dtype, device=A.device)
    for (_, at), (lo, hi, part) in zip(members, plans, strict=True):
        mask[:, :, at + lo : at + hi] = part
    return mask


@dataclass
class _Entry:
    folder: Path
    nbytes: int
    layers: list[str] = field(default_factory=list)
    pins: int = 0


class AdapterCache:
    """LoRA adapters for one base model, least recently used evicted beyond the bounds.

    ``ensure(key, folder)`` loads an adapter if it is not loaded; ``pin`` / ``unpin`` bracket
    its use by a batch row; ``select(row_keys)`` says which adapter (or ``None``) each row of
    the next forward passes uses. Bounds: at most ``max_adapters`` loaded, and at most
    ``max_bytes`` of adapter tensors as held (in :attr:`lora_dtype`; ``None``: no byte bound).
    """

    def __init__(
        self, model: torch.nn.Module, *, max_adapters: int = 8, max_bytes: int | None = None
    ):
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.model = model
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._modules = dict(model.named_modules())
        self._device = next(model.parameters()).device
        self.lora_dtype = lora_dtype(next(model.parameters()).dtype, self._device)
        """The factors' dtype: see :func:`lora_dtype`."""
        self._layers: dict[str, _LayerLora] = {}  # module name -> its factors, hooked
        self._by_module: dict[int, _LayerLora] = {}  # id of the module -> the same
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # key -> entry, LRU first
        self._rows: list[str | None] | None = None  # adapter of each row of the next forwards
        self._plans: dict[tuple, tuple[int, int, torch.Tensor] | None] = {}  # per layout
        self._low_plans: dict[tuple, torch.Tensor] = {}  # per (layout, dtype): plan's mask
        self._masks: dict[tuple, _Masks | None] = {}  # per (members, columns): see _columns_masks
        self._version = 0  # changes with the selection and the loaded adapters
        self._folds: tuple | None = None  # (version, slots, dtype, decode_folds' plan)
        self._unprepared = False
        """Adapters were loaded or evicted since the folded products' operands were last
        packed: the next :meth:`select` of rows with adapters packs them (``prepare``)."""
        self.loads = 0
        self.evictions = 0

    # -- queries --------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def keys(self) -> list[str]:
        """Loaded adapter keys, least recently used first."""
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def pins(self, key: str) -> int:
        return self._entries[key].pins if key in self._entries else 0

    # -- choosing adapters per row ----------------------------------------------------------
    def select(self, row_keys: list[str | None] | None) -> None:
        """The adapter of each batch row for the next forward passes (``None``: base model).
        Every key must be loaded. Selecting the same rows again (the next decode step of an
        unchanged batch) keeps the masks already built."""
        if row_keys is not None and all(k is None for k in row_keys):
            row_keys = None
        if self._unprepared and row_keys is not None:
            self._prepare()
        if row_keys == self._rows:
            return
        if row_keys is not None:
            missing = {k for k in row_keys if k is not None} - self._entries.keys()
            if missing:
                raise KeyError(f"adapters not loaded: {sorted(missing)}")
            row_keys = list(row_keys)  # the caller's list may change under us
        self._rows = row_keys
        self._changed()

    def _changed(self) -> None:
        """The selection or the loaded adapters changed: masks and plans are built again."""
        self._plans, self._low_plans, self._masks = {}, {}, {}
        self._version += 1

    def _prepare(self) -> None:
        """Pack the folded decode steps' operands of every layer (:meth:`_LayerLora.prepare`)."""
        self._unprepared = False
        for layer in self._layers.values():
            layer.prepare()

    def decode_folds(self, slots: list[tuple[tuple[torch.nn.Module, ...], ...]], dtype):
        """For a decode step (one token a row) of the selected rows, per block of ``slots``
        (per block, the layers called on one input each: (q, k, v), (o,), (gate, up),
        (down,)), a callable per input returning its layers' outputs: a
        :class:`FoldedInput` where all of them fold as one (one group, or one layer, of
        prepacked bf16 layers whose batch spans enough of their columns), else the modules
        called one by one (which fold or add their LoRA term themselves). None when no row
        has an adapter or nothing folds. ``dtype``: the activations'. Built once per
        selection: its operands are the ones :meth:`select` packed."""
        if self._rows is None or _LINEAR is None or not DIRECT_FOLDS:
            return None
        cached = self._folds
        if cached is not None and cached[0] == self._version and cached[1] is slots:
            return cached[3] if cached[2] == dtype else None
        plan = [tuple(self._fold_of(modules, dtype) for modules in block) for block in slots]
        if not any(isinstance(f, FoldedInput) for block in plan for f in block):
            plan = None
        self._folds = (self._version, slots, dtype, plan)
        return plan

    def _fold_of(self, modules: tuple[torch.nn.Module, ...], dtype) -> FoldedInput | _ModuleCalls:
        """:meth:`decode_folds`'s callable for layers called on one input."""
        calls = _ModuleCalls(modules)
        layers = [self._by_module.get(id(m)) for m in modules]
        if any(layer is None or not layer.foldable or not layer.blocks for layer in layers):
            return calls
        rows = len(self._rows)
        if any(
            not _decode_rows(rows) or rows < getattr(m, "dense_rows", 1) or m.weight.dtype != dtype
            for m in modules
        ):
            return calls
        group = layers[0].group
        if group is not None:
            if group.members != layers:  # the input's layers are not exactly one group
                return calls
            masks = self._columns_masks(tuple((m.layout, m.group_cols[0]) for m in layers), group.A)
            packed_A = group.packed_A(dtype)  # noqa: N806 - A as in the paper
        elif len(layers) == 1:
            layer = layers[0]
            masks = self._columns_masks(layer._alone, layer.At)
            packed_A = layer._lone_packed_A(dtype)  # noqa: N806
        else:
            return calls
        if masks is None:
            return calls
        members = []
        for layer in layers:
            layer._pack_fold()  # a no-op once select() packed them
            at, width = layer.group_cols if group is not None else (0, layer.At.shape[1])
            module = layer.module
            members.append((module.lora_packed, module.bias, at, at + width))
        return FoldedInput(packed_A, masks.low(dtype), members)

    def _plan_low(self, layout: tuple, dtype: torch.dtype) -> torch.Tensor:
        """The mask of :meth:`_plan_for` (not None) in ``dtype``, converted once per layout."""
        key = (layout, dtype)
        low = self._low_plans.get(key)
        if low is None:
            low = self._low_plans[key] = self._plan_for(layout)[2].to(dtype)
        return low

    def _columns_masks(self, members: tuple[tuple[tuple, int], ...], A: torch.Tensor):
        """:func:`_columns_mask` for these members over ``A``'s columns, as :class:`_Masks`
        (or None), built once per selection for all the layers and groups of the same
        layouts (most of a model's: every adapter on every projection gives one layout per
        shape), not once per layer."""
        key = (members, A.shape[1])
        if key not in self._masks:
            mask = _columns_mask(self, members, A)
            self._masks[key] = None if mask is None else _Masks(mask)
        return self._masks[key]

    def _plan_for(self, layout: tuple) -> tuple[int, int, torch.Tensor] | None:
        """For the selected rows and a layer's layout, ``(lo, hi, mask)``: the blocks of the
        adapters these rows use lie in columns ``lo:hi`` of the layer's factors, and mask
        (B, 1, hi - lo) holds each row's adapter scale over that adapter's block, 0 elsewhere.
        None when no row uses these adapters. Built once per layout and selection."""
        if layout in self._plans:
            return self._plans[layout]
        blocks, at = {}, 0
        for key, rank, s in layout:
            blocks[key] = (at, rank, s)
            at += rank
        used = [blocks[k] for k in set(self._rows) if k in blocks]
        plan = None
        if used:
            # Only the columns between the first and last used block: a batch of one adapter
            # multiplies by its rank, not by the sum of every loaded adapter's.
            lo = min(a for a, _, _ in used)
            hi = max(a + r for a, r, _ in used)
            mask = torch.zeros((len(self._rows), 1, hi - lo), dtype=self.lora_dtype)
            for b, key in enumerate(self._rows):
                if key in blocks:
                    at, rank, s = blocks[key]
                    mask[b, 0, at - lo : at - lo + rank] = s
            plan = (lo, hi, mask.to(self._device))
        self._plans[layout] = plan
        return plan

    # -- loading and eviction -------------------------------------------------------------
    def ensure(self, key: str, folder: Path) -> None:
        """Load ``folder`` as adapter ``key`` unless it is loaded; mark it most recently used.

        Raises ``AdapterCacheFull`` when room cannot be made because the adapters that would
        have to go are pinned, ``AdapterError`` when the adapter cannot be served (alone larger
        than ``max_bytes``, a LoRA variant this runtime does not implement, wrong shapes).
        """
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        folder = Path(folder)
        try:  # hashed again at load: the files read now are the files the manifest lists
            verify_adapter_bundle(folder, f"adapter {key}")
        except (BundleIntegrityError, NotABundleError) as exc:
            raise AdapterError(str(exc)) from None
        factors = self._read(folder, key)
        nbytes = sum(f.A.nbytes + f.B.nbytes for f in factors.values())
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise AdapterError(
                f"adapter {key} holds {nbytes} bytes of weights, more than the engine's bound "
                f"of {self.max_bytes} bytes for all adapters"
            )
        self._make_room(nbytes)
        for name, f in factors.items():
            layer = self._layers.get(name)
            if layer is None:
                layer = self._layers[name] = _LayerLora(self, self._modules[name])
                self._by_module[id(layer.module)] = layer
                layer.install()
            layer.factors[key] = f
            layer.rebuild()
        self._regroup(factors)
        self._entries[key] = _Entry(folder=folder, nbytes=nbytes, layers=list(factors))
        self._changed()
        self._unprepared = True
        self.loads += 1
        logger.info(
            "loaded adapter %s from %s (%.1f MB; %d loaded)",
            key,
            folder,
            nbytes / 1e6,
            len(self._entries),
        )

    def pin(self, key: str) -> None:
        self._entries[key].pins += 1

    def unpin(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    def evict(self, key: str) -> None:
        """Unload one adapter now (it must not be pinned)."""
        entry = self._entries[key]
        if entry.pins:
            raise RuntimeError(f"adapter {key} is in use by {entry.pins} batch row(s)")
        for name in entry.layers:
            layer = self._layers[name]
            del layer.factors[key]
            layer.rebuild()
        self._regroup(entry.layers)
        del self._entries[key]
        self._changed()
        self._unprepared = True
        self.evictions += 1
        logger.info("unloaded adapter %s", key)

    def _regroup(self, names) -> None:
        """Group again the siblings (:data:`SHARED_INPUTS`) of the layers ``names`` that were
        just rebuilt: siblings share one A tensor when they hold the same adapters in the
        same order."""
        parents = set()
        for name in names:
            parent, _, leaf = name.rpartition(".")
            for siblings in SHARED_INPUTS:
                if leaf in siblings:
                    parents.add((parent, siblings))
        for parent, siblings in parents:
            members = [
                self._layers.get(f"{parent}.{leaf}" if parent else leaf) for leaf in siblings
            ]
            if any(m is None for m in members):
                continue
            if any(m.group is not None for m in members):  # a member not rebuilt: ungroup
                for m in members:
                    m.rebuild()
            keys = [list(m.factors) for m in members]
            if keys[0] and all(k == keys[0] for k in keys):
                _SharedInput(members)

    def _make_room(self, incoming_bytes: int) -> None:
        def over() -> bool:
            count = len(self._entries) + 1 > self.max_adapters
            size = self.max_bytes is not None and self.nbytes + incoming_bytes > self.max_bytes
            return count or size

        while over():
            victim = next((k for k, e in self._entries.items() if e.pins == 0), None)
            if victim is None:
                raise AdapterCacheFull(
                    f"all {len(self._entries)} loaded adapters are in use; retry when a batch ends"
                )
            self.evict(victim)

    def _read(self, folder: Path, key: str) -> dict[str, _Factors]:
        """An adapter's factors per target module name, checked against the base model.
        Messages name the adapter by its key, never by its folder."""
        return _read_factors(folder, key, self._modules, self.lora_dtype)


def read_adapter(
    folder: Path, modules: dict[str, torch.nn.Module], label: str
) -> dict[str, _Factors]:
    """An adapter bundle's LoRA factors per target module name, read exactly as the engine
    loads them: the bundle verified first (:func:`tunelab.bundle.verify_adapter_bundle`),
    then every factor checked against ``modules`` (module name -> the base model's layer).
    Nothing is hooked. Raises ``AdapterError`` naming the adapter as ``label``."""
    folder = Path(folder)
    try:
        verify_adapter_bundle(folder, f"adapter {label}")
    except (BundleIntegrityError, NotABundleError) as exc:
        raise AdapterError(str(exc)) from None
    return _read_factors(folder, label, modules)


def _read_factors(
    folder: Path, key: str, modules: dict[str, torch.nn.Module], dtype: torch.dtype | None = None
) -> dict[str, _Factors]:
    """The factors in ``dtype`` (None: each module's weight dtype)."""
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    unsupported = [
        what
        for what, bad in (
            (f"peft_type {config.get('peft_type')}", config.get("peft_type", "LORA") != "LORA"),
            ("DoRA (use_dora)", bool(config.get("use_dora"))),
            (f"bias={config.get('bias')!r}", config.get("bias", "none") != "none"),
            ("lora_bias", bool(config.get("lora_bias"))),
            ("modules_to_save", bool(config.get("modules_to_save"))),
            ("fan_in_fan_out", bool(config.get("fan_in_fan_out"))),
            ("trainable_token_indices", bool(config.get("trainable_token_indices"))),
            ("target_parameters", bool(config.get("target_parameters"))),
        )
        if bad
    ]
    if unsupported:
        raise AdapterError(
            f"adapter {key} uses {', '.join(unsupported)}, which this engine does not "
            "serve (plain LoRA on linear layers only)"
        )
    alpha, rslora = config.get("lora_alpha", 8), bool(config.get("use_rslora"))
    alpha_pattern = config.get("alpha_pattern") or {}
    weights = load_file(folder / WEIGHTS)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for raw, tensor in weights.items():
        match = _WEIGHT_KEY.match(raw.removeprefix(_PEFT_PREFIX))
        if match is None:
            raise AdapterError(f"adapter {key} has a weight this engine cannot apply: {raw}")
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    factors: dict[str, _Factors] = {}
    for name, pair in pairs.items():
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise AdapterError(
                f"adapter {key} targets {name}, which is not a linear layer of the base model"
            )
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"adapter {key} lacks lora_A or lora_B for {name}")
        A, B = pair["A"], pair["B"]
        r = A.shape[0]
        if A.shape != (r, module.in_features) or B.shape != (module.out_features, r):
            raise AdapterError(
                f"adapter {key} does not fit {name}: lora_A {tuple(A.shape)}, "
                f"lora_B {tuple(B.shape)} for a ({module.out_features}, "
                f"{module.in_features}) layer"
            )
        a = alpha_pattern.get(_pattern_key(alpha_pattern, name), alpha)
        device, as_dtype = module.weight.device, dtype or module.weight.dtype
        factors[name] = _Factors(
            A=A.to(device, as_dtype).contiguous(),
            B=B.to(device, as_dtype).contiguous(),
            scale=a / math.sqrt(r) if rslora else a / r,
        )
    if not factors:
        raise AdapterError(f"adapter {key} has no LoRA weights")
    return factors


def _pattern_key(patterns: dict[str, object], name: str) -> str:
    """The key of ``patterns`` that matches module ``name``, as PEFT matches rank and alpha
    patterns (``peft.utils.other.get_pattern_key``): the name ends with the pattern."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", name):
            return pattern
    return name
