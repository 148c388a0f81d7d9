"""The model runner: the one place where TuneLab turns prompts into tokens.

Every face that generates goes through it, so one request gives the same tokens everywhere:
the server's scheduler (``engine.py``) feeds it from its queue, ``tunelab predict`` and
``tunelab eval`` call :meth:`ModelRunner.generate`, and RL rollouts call
:func:`sample_answers` on the policy being trained. It owns, for the rows of one running batch:

    prefill  new prompts in one forward pass: left-padded, with an attention mask and per-row
             position ids, each row with its own adapter; a prompt asking for n candidates is
             computed once and its cache row copied n times; the first token is drawn
    merge    their KV cache joins the running batch's cache, left-padded to a common length
    decode   one forward pass for the whole batch, one token per row (``_decode_step``: the
             single place a faster decode lands); each row samples with its own parameters and
             generator (``sampling.py``)
    stop     a row stops on end-of-sequence, on a stop sequence (found in the decoded text and
             trimmed from it) or at its token budget; finished rows leave the batch and their
             cache rows are dropped, so the batch can admit others in their place

Left padding in the middle of a cache is harmless: keys are stored after the rotary embedding
was applied at each row's own positions, and the attention mask hides the padded columns.

Adapters, two ways. With an :class:`~tunelab.serving.adapters.AdapterCache` (the server: one
base model, many LoRA adapters mixed in one batch), each row names its adapter. Without one the
model is used as it is, every row through whatever adapter is active on it: a PEFT model loaded
for ``predict``/``eval``, or the live policy of an RL run whose weights change every step.

The runner is synchronous and has no thread: the caller owns it (the engine thread, or the
training loop) and all its methods run under ``torch.inference_mode``.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.data.template import prompt_ids as render_prompt_ids
from tunelab.serving.adapters import AdapterCache
from tunelab.serving.fast_decode import KVCache, LeanDecoder, causal_lm_core
from tunelab.serving.generation import GenerationParams
from tunelab.serving.sampling import RowSampling, make_generator, sample_batch
from tunelab.serving.threads import one_thread

logger = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """The prompt does not fit in the model's context (a client error: the API answers 400)."""


@dataclass
class GenerationResult:
    texts: list[str]
    """One completion per candidate, stop sequences trimmed, end-of-sequence not included."""
    finish_reasons: list[str]
    """Per candidate: ``"stop"`` (end of sequence or stop sequence) or ``"length"``."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens drawn over all candidates, the end-of-sequence token included."""
    token_ids: list[list[int]] = field(default_factory=list)
    """Per candidate, the tokens drawn (end-of-sequence excluded; a stop sequence's tokens
    included, since it need not end on a token boundary)."""
    eos_token_ids: list[int | None] = field(default_factory=list)
    """Per candidate, the end-of-sequence token that ended it (None: it ended otherwise)."""


@dataclass
class RowGroup:
    """One prompt and how to complete it: ``n`` candidates, each a row of the batch."""

    prompt: list[int]
    params: GenerationParams
    n: int = 1
    stop_sequences: Sequence[str] = ()
    adapter_key: str | None = None
    """The adapter of these rows in the runner's ``AdapterCache`` (reserved by the caller with
    :meth:`ModelRunner.reserve_adapter`); None: the model as it is."""
    incremental: bool = False
    """Decode text as tokens arrive (for streaming); rows with stop sequences always do."""
    owner: Any = None
    """The caller's handle (the engine's job), untouched by the runner."""


class Detokenizer:
    """Text deltas from a growing list of token ids, never splitting a multi-byte character.

    Decodes a short window (the tokens since the last emitted delta, plus the few before them
    for context) and emits only what is new once it no longer ends in an incomplete character
    (U+FFFD), the incremental scheme of Hugging Face's ``TextStreamer`` and vLLM.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens before this index have been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


@dataclass(eq=False)
class Row:
    """One candidate of one group: a row of the running batch."""

    generation: Generation = field(repr=False)
    index: int
    sampling: RowSampling
    generator: torch.Generator
    max_new: int
    pos: int
    """Position id of ``next_token``, the token drawn last and not yet fed to the model."""
    detok: Detokenizer | None
    """Only for rows whose text is needed while they run (streaming, stop sequences)."""
    next_token: int = -1
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    done: bool = False
    finish_reason: str = ""
    eos_token: int | None = None

    @property
    def group(self) -> RowGroup:
        return self.generation.group

    def take_delta(self) -> str:
        """The text not handed out yet that can no longer become part of a stop sequence."""
        safe = len(self.text)
        if not self.done:
            safe -= _held_back(self.text, self.group.stop_sequences)
        if safe <= self.emitted:
            return ""
        delta, self.emitted = self.text[self.emitted : safe], safe
        return delta


@dataclass(eq=False)
class Generation:
    """A group being generated: its rows and its token count."""

    group: RowGroup
    rows: list[Row] = field(default_factory=list)
    completion_tokens: int = 0

    @property
    def done(self) -> bool:
        return all(r.done for r in self.rows)

    def result(self) -> GenerationResult:
        return GenerationResult(
            texts=[r.text for r in self.rows],
            finish_reasons=[r.finish_reason for r in self.rows],
            prompt_tokens=len(self.group.prompt),
            completion_tokens=self.completion_tokens,
            token_ids=[list(r.tokens) for r in self.rows],
            eos_token_ids=[r.eos_token for r in self.rows],
        )


def check_prompt_ids(prompt: Sequence[int], vocab_size: int, max_positions: int) -> list[int]:
    """The prompt as a list of ints; ValueError when a model of ``vocab_size`` tokens and
    ``max_positions`` positions cannot read it (every engine checks with this, vLLM's too)."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("the prompt is empty")
    if not all(0 <= t < vocab_size for t in prompt):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    if len(prompt) >= max_positions:
        raise PromptTooLongError(
            f"the prompt has {len(prompt)} tokens; this model reads at most "
            f"{max_positions} tokens including the output"
        )
    return prompt


class ModelRunner:
    """A causal LM, its tokenizer and one running batch: prefill, decode, sample, stop.

    ``adapters``: per-row LoRA adapters on ``model`` (the server); None: ``model`` as it is,
    with whatever adapter is active on it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        adapters: AdapterCache | None = None,
        lean_decode: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.device = next(model.parameters()).device  # inputs and the KV cache live there
        self._config = config = model.config
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        self.vocab_size = int(config.vocab_size)
        generation_config = getattr(model, "generation_config", None)
        eos = {tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)}
        self.eos_ids = frozenset(
            i for e in eos for i in (e if isinstance(e, list | tuple) else [e]) if i is not None
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not re-entrant
        self._cache_arg = _cache_argument(model)
        core = causal_lm_core(model) if lean_decode else None
        self._lean = LeanDecoder(core) if core is not None else None
        """The lean decode step over a preallocated cache (``fast_decode.py``) when the model
        is one it supports; else transformers' forward with a ``DynamicCache``."""
        self.rows: list[Row] = []
        self._cache = None  # KV cache of the running batch, (B, heads, L, head_dim) per layer
        self._mask: torch.Tensor | None = None  # (B, L) 1 where the cache holds a real token
        self.stats = {
            "requests": 0,
            "prefills": 0,
            "prefill_seconds": 0.0,
            "steps": 0,
            "row_steps": 0,
            "step_seconds": 0.0,
        }
        """Counters since start: requests prefilled, prefill passes, decode steps, rows decoded
        over all steps (row_steps / steps is the mean batch size), seconds in each."""

    # -- prompts (any thread) ------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat messages as token ids, rendered exactly as training renders a prompt."""
        with self._tokenizer_lock:
            return list(render_prompt_ids(self.tokenizer, messages))

    def check_prompt(self, prompt: Sequence[int]) -> list[int]:
        """The prompt as a list of ints; ValueError when this model cannot read it."""
        return check_prompt_ids(prompt, self.vocab_size, self.max_positions)

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- the batch (the owner's thread) ------------------------------------------------------
    def reserve_adapter(self, key: str, folder: Path, rows: int) -> None:
        """Load adapter ``key`` if needed and pin it for ``rows`` rows; the runner unpins each
        as its row leaves the batch. Raises ``AdapterCacheFull`` (retry once rows have left)
        or ``AdapterError``."""
        if self.adapters is None:
            raise ValueError("this runner has no adapter cache: it serves its model as it is")
        self.adapters.ensure(key, Path(folder))
        self._pin(key, rows)

    @torch.inference_mode()
    def start(self, groups: list[RowGroup]) -> list[Generation]:
        """Prefill the groups' prompts, draw their first tokens and merge their rows into the
        running batch. On failure the running batch is untouched and the groups' adapter pins
        are released."""
        if not groups:
            return []
        # Rows in the groups' order: the adapter cache's LoRA products cost the same however
        # the adapters are spread over the rows (one masked product per layer).
        try:
            generations, cache, mask = self._prefill(list(groups))
        except Exception:
            for g in groups:
                self._unpin(g.adapter_key, g.n)
            raise
        self._merge([r for gen in generations for r in gen.rows], cache, mask)
        self._drop_finished()
        return generations

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One decode step for every running row; returns those rows, finished ones marked
        ``done`` (they have left the batch)."""
        rows = list(self.rows)
        if rows:
            self._decode_step()
        return rows

    @torch.inference_mode()
    def drop(self, which: Callable[[Row], bool]) -> list[Row]:
        """Take the rows for which ``which`` is true out of the batch (cancelled requests)."""
        dropped = [r for r in self.rows if not r.done and which(r)]
        for r in dropped:
            r.done, r.finish_reason = True, "cancelled"
        self._drop_finished()
        return dropped

    def reset(self) -> list[Row]:
        """Empty the batch (after a failed step); returns the rows that were in it."""
        rows = self.rows
        for r in rows:
            self._unpin(r.group.adapter_key, 1)
        self.rows, self._cache, self._mask = [], None, None
        return rows

    def generate(
        self,
        groups: Sequence[RowGroup],
        *,
        max_batch_size: int | None = None,
        on_done: Callable[[int, GenerationResult], None] | None = None,
    ) -> list[GenerationResult]:
        """Generate every group to the end, synchronously, with continuous batching: at most
        ``max_batch_size`` rows at a time (None: all at once), groups admitted in the given
        order as rows free up. ``on_done(index, result)`` is called as each group finishes.
        Results are in the groups' order. A group naming an adapter needs it loaded in the
        runner's adapter cache."""
        if self.rows:
            raise RuntimeError("the runner is serving a batch already")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        for g in groups:  # before any pin, so a refusal leaves nothing pinned
            if g.adapter_key is not None and (
                self.adapters is None or g.adapter_key not in self.adapters
            ):
                raise ValueError(f"adapter {g.adapter_key!r} is not loaded in this runner")
        results: list[GenerationResult | None] = [None] * len(groups)
        waiting = list(range(len(groups)))[::-1]  # a stack: next group last
        live: list[tuple[int, Generation]] = []
        try:
            while waiting or live:
                room = (max_batch_size or (1 << 62)) - len(self.rows)
                taken: list[int] = []
                while waiting and (groups[waiting[-1]].n <= room or not (self.rows or taken)):
                    i = waiting.pop()
                    self._pin(groups[i].adapter_key, groups[i].n)
                    taken.append(i)
                    room -= groups[i].n
                live += zip(taken, self.start([groups[i] for i in taken]), strict=True)
                if self.rows:
                    self.step()
                finished = [(i, g) for i, g in live if g.done]
                live = [(i, g) for i, g in live if not g.done]
                for i, gen in finished:
                    results[i] = gen.result()
                    if on_done is not None:
                        on_done(i, results[i])
        finally:
            self.reset()
        return results  # type: ignore[return-value]

    # -- the model -----------------------------------------------------------------------------
    def _forward(self, ids, mask, positions, cache, row_keys: list[str | None]):
        if self.adapters is not None:
            self.adapters.select(row_keys)
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            # The last position by index, not ``logits_to_keep=1``: the slice ``[:, -1:]`` is a
            # strided view, and a bf16 linear over it (a prefill's output head) copies the
            # whole head weight once per row (~0.6 s for 4 rows of SmolLM2-135M); the index
            # hands the head a contiguous (B, 1, C).
            logits_to_keep=torch.tensor([ids.shape[1] - 1], device=ids.device),
            **{self._cache_arg: cache},
        )

    def _prefill(self, groups: list[RowGroup]):
        """One forward pass over the new prompts (left-padded); returns their generations (one
        row per candidate, first token drawn), their KV cache and attention mask."""
        from transformers import DynamicCache

        if self.adapters is None and any(g.adapter_key is not None for g in groups):
            raise ValueError("this runner has no adapter cache: rows cannot name adapters")
        width = max(len(g.prompt) for g in groups)
        ids = torch.full((len(groups), width), self.pad_id, dtype=torch.long)  # (G, T)
        mask = torch.zeros((len(groups), width), dtype=torch.long)  # (G, T)
        for i, g in enumerate(groups):
            ids[i, width - len(g.prompt) :] = torch.tensor(g.prompt)
            mask[i, width - len(g.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (G, T): 0.. on real tokens
        start = time.perf_counter()
        out = self._forward(
            ids, mask, positions, DynamicCache(config=self._config), [g.adapter_key for g in groups]
        )
        self.stats["prefills"] += 1
        self.stats["prefill_seconds"] += time.perf_counter() - start
        self.stats["requests"] += len(groups)
        logits = out.logits[:, -1, :]  # (G, V)
        layers = _layers(_cache_of(out))
        if any(g.n > 1 for g in groups):
            # One row per candidate: a prompt's cache row is copied for each of its candidates.
            index = torch.tensor(
                [i for i, g in enumerate(groups) for _ in range(g.n)], device=self.device
            )
            layers = [(k[index], v[index]) for k, v in layers]
            mask, logits = mask[index], logits[index]  # (R, T), (R, V)
        cache = self._cache_from(layers)
        generations, rows = [], []
        for g in groups:
            gen = Generation(g)
            p = g.params
            for c in range(g.n):
                gen.rows.append(
                    Row(
                        generation=gen,
                        index=c,
                        sampling=RowSampling(p.temperature, p.top_k, p.top_p),
                        generator=make_generator(None if p.seed is None else p.seed + c),
                        max_new=min(p.max_output_tokens, self.max_positions - len(g.prompt)),
                        pos=len(g.prompt),
                        detok=Detokenizer(self.decode)
                        if g.incremental or any(g.stop_sequences)
                        else None,
                    )
                )
            generations.append(gen)
            rows += gen.rows
        self._sample(rows, logits)
        return generations, cache, mask

    def _decode_step(self) -> None:
        """One token for every running row: the token each drew last goes in, the next comes
        out."""
        rows = self.rows
        inputs = torch.tensor([[r.next_token] for r in rows], device=self.device)  # (B, 1)
        positions = torch.tensor([[r.pos] for r in rows], device=self.device)  # (B, 1)
        new = torch.ones((len(rows), 1), dtype=torch.long, device=self.device)
        mask = torch.cat([self._mask, new], dim=1)
        start = time.perf_counter()
        keys = [r.group.adapter_key for r in rows]
        if self._lean is not None:
            folds = None
            if self.adapters is not None:
                self.adapters.select(keys)
                if self._lean.slots is not None:  # the folded products, called directly
                    folds = self.adapters.decode_folds(self._lean.slots, self._lean.dtype)
            logits = self._lean(  # (B, V); cache in place
                inputs,
                positions,
                mask,
                self._cache,
                adapters=any(k is not None for k in keys),
                folds=folds,
            )
        else:
            out = self._forward(inputs, mask, positions, self._cache, keys)  # over (B, L + 1)
            self._cache, logits = _cache_of(out), out.logits[:, -1, :]
        self._mask = mask
        self.stats["steps"] += 1
        self.stats["step_seconds"] += time.perf_counter() - start
        self.stats["row_steps"] += len(rows)
        for r in rows:
            r.pos += 1
        self._sample(rows, logits)
        self._drop_finished()

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        # Drawn on the CPU with each row's own CPU generator: a seed gives the same tokens on
        # every device (the copy of (B, V) logits is a no-op on a CPU).
        logits = logits.cpu()
        # Sampling is a few passes over (B, 49k) logits: too small to share between threads.
        # On two, a sampled single stream served 25 tok/s against 38 greedy (bench_serving.py
        # --sampling defaults), its step being ~2.5 ms longer on one.
        with one_thread():
            tokens = sample_batch(logits, [r.sampling for r in rows], [r.generator for r in rows])
        for row, token in zip(rows, tokens, strict=True):
            self._accept(row, token)

    # -- stopping ------------------------------------------------------------------------------
    def _accept(self, row: Row, token: int) -> None:
        """Record a drawn token, and stop the row if it ends here."""
        row.generation.completion_tokens += 1
        if token in self.eos_ids:
            row.eos_token = token
            return self._finish(row, "stop")
        row.next_token = token
        row.tokens.append(token)
        if row.detok is not None:
            delta = row.detok.push(token)
            if delta:
                row.text += delta
                if self._trim_stop(row, len(delta)):
                    return self._finish(row, "stop")
        if len(row.tokens) >= row.max_new:
            self._finish(row, "length")

    def _finish(self, row: Row, reason: str) -> None:
        if row.detok is None:
            row.text = self.decode(row.tokens)
        elif reason != "stop" or row.eos_token is not None:  # not cut at a stop sequence
            tail = row.detok.flush()
            if tail:
                row.text += tail
                if self._trim_stop(row, len(tail)):
                    reason = "stop"
        row.done, row.finish_reason = True, reason

    @staticmethod
    def _trim_stop(row: Row, new_chars: int) -> bool:
        """Cut the text at the first stop sequence that the new characters complete."""
        cut = None
        for stop in row.group.stop_sequences:
            if not stop:
                continue
            at = row.text.find(stop, max(0, len(row.text) - new_chars - len(stop) + 1))
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is None:
            return False
        row.text = row.text[:cut]
        return True

    # -- the KV cache --------------------------------------------------------------------------
    def _merge(self, rows: list[Row], cache, mask: torch.Tensor) -> None:
        """Append new rows (with their cache and mask) to the running batch."""
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._cache = self._cache_from(
            [
                (
                    torch.cat([_pad_left(k0, width), _pad_left(k1, width)]),
                    torch.cat([_pad_left(v0, width), _pad_left(v1, width)]),
                )
                for (k0, v0), (k1, v1) in zip(_layers(self._cache), _layers(cache), strict=True)
            ]
        )
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self.rows = self.rows + rows

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch, and the cache columns no row needs any more."""
        if not any(r.done for r in self.rows):
            return
        for r in self.rows:
            if r.done:
                self._unpin(r.group.adapter_key, 1)
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if not keep:
            self.rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        first = int(mask.any(dim=0).long().argmax())  # leftmost column some row still attends to
        self._cache = self._cache_from(
            [(k[index, :, first:], v[index, :, first:]) for k, v in _layers(self._cache)]
        )
        self._mask = mask[:, first:]
        self.rows = [self.rows[i] for i in keep]

    def _cache_from(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        """The running batch's cache from per-layer (keys, values): preallocated with spare
        columns for the lean step, a ``DynamicCache`` for transformers' forward."""
        if self._lean is not None:
            return KVCache(layers)
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers)

    def _pin(self, key: str | None, rows: int) -> None:
        if key is None:
            return
        if self.adapters is None or key not in self.adapters:
            raise ValueError(f"adapter {key!r} is not loaded in this runner")
        for _ in range(rows):
            self.adapters.pin(key)

    def _unpin(self, key: str | None, rows: int) -> None:
        if key is not None and self.adapters is not None:
            for _ in range(rows):
                self.adapters.unpin(key)


def sample_answers(
    runner: ModelRunner,
    prompts: Sequence[Sequence[int]],
    samples: int,
    params: GenerationParams,
) -> tuple[list[np.ndarray], list[bool]]:
    """``samples`` answers to each prompt, prompt-major (``answers[i * samples + j]`` is the
    j-th answer to prompt i), as RL rollouts read them: each answer runs to and including the
    end-of-sequence token it drew; ``cut[i]`` marks one stopped by the token budget instead.

    Candidate j of prompt i draws with seed ``params.seed + i * samples + j``, so no two rows
    share a random stream.
    """
    groups = [
        RowGroup(
            runner.check_prompt(p),
            params
            if params.seed is None
            else params.model_copy(update={"seed": params.seed + i * samples}),
            n=samples,
        )
        for i, p in enumerate(prompts)
    ]
    answers, cut = [], []
    for result in runner.generate(groups):
        for ids, eos, reason in zip(
            result.token_ids, result.eos_token_ids, result.finish_reasons, strict=True
        ):
            answers.append(np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int64))
            cut.append(reason == "length")
    return answers, cut


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop sequence: it is
    held back from a stream until the next tokens show whether the stop sequence follows."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _cache_argument(model: torch.nn.Module) -> str:
    """The name of the KV cache argument of the model's forward: ``cache`` since transformers
    5.25 renamed ``past_key_values`` (deprecated, removal announced for 5.40); older 5.x
    releases know only ``past_key_values``."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(core.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    """The KV cache of a forward's output, under its 5.25+ name or the older one."""
    cache = out.get("cache")
    return cache if cache is not None else out.past_key_values


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension 2 (cache: (B, H, L, D)) or 1 (mask: (B, L)) on the left to ``width``."""
    dim = 2 if t.dim() == 4 else 1
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
