"""The inference engine: one base model in memory serving many LoRA adapters, with continuous
batching.

Requests from any thread go into a queue; one engine thread owns the model and runs the loop:

    admit   take waiting requests while the batch has room (up to ``max_batch_size`` rows; a
            request asking for n candidates takes n rows), load their adapters (pinned while in
            use), and prefill their prompts in one forward pass: left-padded, with an attention
            mask and per-row position ids, each row with its own adapter (``adapters.py``)
    merge   their KV cache joins the running batch's cache, left-padded to a common length
    decode  one forward pass for the whole batch, one token per row: the token each row drew
            last step goes in, logits for the next come out; each row samples with its own
            parameters and generator (``sampling.py``)
    finish  a row stops on end-of-sequence, on a stop sequence (found in the decoded text and
            trimmed from it) or at ``max_output_tokens``; finished rows leave the batch, their
            cache rows are dropped, and the next step admits new requests in their place

Left padding in the middle of a cache is harmless: keys are stored after the rotary embedding
was applied at each row's own positions, and the attention mask hides the padded columns.

Thread model: only the engine thread touches torch (under ``torch.inference_mode``). Callers
get a ``concurrent.futures.Future`` (``submit``), a blocking iterator of text deltas
(``stream``), or the asyncio equivalents (``agenerate``, ``astream``), whose deltas reach the
event loop through ``call_soon_threadsafe``, so nothing blocks it. Bad requests (wrong base
model, prompt too long...) raise at once in the caller's thread. Cancelling the future, closing
the stream or cancelling the asyncio task frees the request's rows at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.data.template import prompt_ids as render_prompt_ids
from tunelab.models import load_causal_lm
from tunelab.serving.adapters import (
    AdapterCache,
    AdapterCacheFull,
    AdapterError,
    check_adapter_folder,
)
from tunelab.serving.generation import GenerationParams
from tunelab.serving.sampling import RowSampling, make_generator, sample_batch

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterError",
    "AsyncTextStream",
    "Engine",
    "EngineClosedError",
    "GenerationRequest",
    "GenerationResult",
    "TextStream",
]


class EngineClosedError(RuntimeError):
    """The engine was closed before this request could be served."""


@dataclass
class GenerationRequest:
    """One prompt to complete, given either as token ids or as chat messages.

    ``messages`` are rendered with the engine's tokenizer exactly as training renders a prompt
    (``tunelab.data.template.prompt_ids``); pass ``prompt_ids`` to render it yourself.
    """

    prompt_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    adapter: tuple[str, Path] | None = None
    """``(key, folder)``: the key names the adapter in the cache (e.g. a model version id), the
    folder is its bundle. ``None``: the base model alone."""
    params: GenerationParams = field(default_factory=GenerationParams)
    stop_sequences: list[str] = field(default_factory=list)
    """Generation stops at the first of these in the output, which is trimmed before it."""
    candidate_count: int = 1
    """How many completions to draw for this prompt (each one a batch row)."""


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


_END = object()
"""Sent to a stream after its last delta."""


class _Job:
    """A submitted request while the engine serves it."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt: list[int],
        sink: Callable[[Any], None] | None,
    ):
        self.request = request
        self.prompt = prompt
        self.n = request.candidate_count
        self.future: Future[GenerationResult] = Future()
        self.sink = sink
        self.texts: list[str] = [""] * self.n
        self.reasons: list[str] = [""] * self.n
        self.token_ids: list[list[int]] = [[] for _ in range(self.n)]
        self.completion_tokens = 0
        self.remaining = self.n
        self._cancelled = threading.Event()
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or self.future.cancelled()

    def emit(self, item: Any) -> None:
        if self.sink is None:
            return
        try:
            self.sink(item)
        except Exception:  # the consumer went away (e.g. its event loop closed)
            logger.debug("stream consumer gone; cancelling the request", exc_info=True)
            self._cancelled.set()

    def fail(self, exc: BaseException) -> None:
        try:
            if not self.future.done():
                self.future.set_exception(exc)
        except InvalidStateError:
            pass
        self.emit(exc)


class _Detokenizer:
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


@dataclass
class _Row:
    """One candidate of one job: a row of the running batch."""

    job: _Job
    index: int
    adapter_key: str | None
    sampling: RowSampling
    generator: torch.Generator
    max_new: int
    detok: _Detokenizer
    pos: int
    """Position id of ``next_token``, the token drawn last and not yet fed to the model."""
    next_token: int = -1
    generated: int = 0
    text: str = ""
    emitted: int = 0
    done: bool = False


class TextStream:
    """Text deltas of one request, in order; iterate it, or ``close()`` to cancel the request.

    ``result`` is the request's future: done (with finish reason and token counts) once the
    iteration has ended.
    """

    def __init__(self, job: _Job, items: queue.Queue):
        self._job = job
        self._items = items
        self.result: Future[GenerationResult] = job.future

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = self._items.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._job.cancel()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._job.future.done():
            self.close()


class AsyncTextStream:
    """Text deltas of one request for asyncio: ``async for delta in stream``. ``result`` is the
    request's future (done once the iteration has ended); ``close()`` cancels the request."""

    def __init__(self, job: _Job, items: asyncio.Queue):
        self._job = job
        self._items = items
        self.result: Future[GenerationResult] = job.future

    def __aiter__(self) -> AsyncTextStream:
        return self

    async def __anext__(self) -> str:
        try:
            item = await self._items.get()
        except asyncio.CancelledError:
            self.close()
            raise
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if not self._job.future.done():
            self._job.cancel()

    async def aclose(self) -> None:
        self.close()


class Engine:
    """One base model in memory serving many LoRA adapters, with continuous batching.

    ``model_dir`` is the base model's safetensors folder, ``base_ref`` the name it was resolved
    from (adapters whose bundle names that base are accepted). ``max_adapters`` and
    ``max_adapter_bytes`` bound the adapters kept loaded (least recently used unloaded first);
    ``batch_window_ms`` is how long an idle engine waits after a first request for others to
    share its prefill.
    """

    def __init__(
        self,
        model_dir: Path,
        tokenizer,
        *,
        base_ref: str | None = None,
        max_batch_size: int = 16,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        batch_window_ms: float = 5,
        dtype: torch.dtype = torch.float32,
    ):
        self.model_dir = Path(model_dir)
        self.base_ref = base_ref
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window_ms / 1000
        base = load_causal_lm(self.model_dir, dtype=dtype).eval()
        self.model = base
        self.adapters = AdapterCache(base, max_adapters=max_adapters, max_bytes=max_adapter_bytes)
        self._config = config = base.config
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        self.vocab_size = int(config.vocab_size)
        eos = {tokenizer.eos_token_id, getattr(base.generation_config, "eos_token_id", None)}
        self.eos_ids = frozenset(
            i for e in eos for i in (e if isinstance(e, list | tuple) else [e]) if i is not None
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not re-entrant

        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: deque[_Job] = deque()
        self._rows: list[_Row] = []
        self._cache = None  # DynamicCache of the running batch, (B, heads, L, head_dim) per layer
        self._mask: torch.Tensor | None = None  # (B, L) 1 where the cache holds a real token
        self._closing = False
        self._submit_lock = threading.Lock()
        self._drain = True
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
        self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
        self._thread.start()

    # -- public API (any thread) -------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a request; the future resolves to its result (or raises its error)."""
        return self._enqueue(request, sink=None).future

    def generate(
        self, request: GenerationRequest, timeout: float | None = None
    ) -> GenerationResult:
        """``submit`` and wait."""
        return self.submit(request).result(timeout)

    def stream(self, request: GenerationRequest) -> TextStream:
        """Queue a one-candidate request and iterate its text deltas as they are decoded."""
        if request.candidate_count != 1:
            raise ValueError("streaming serves one candidate per request")
        items: queue.Queue = queue.Queue()
        job = self._enqueue(request, sink=items.put)
        return TextStream(job, items)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """``submit`` for asyncio: awaiting does not block the event loop; cancelling the task
        cancels the request."""
        return await asyncio.wrap_future(self.submit(request))

    def astream(self, request: GenerationRequest) -> AsyncTextStream:
        """``stream`` for asyncio (call it on the event loop): an async iterator of text deltas.
        Errors in the request raise here, before any delta; cancelling the task that iterates
        it (a client that went away) or ``close()`` cancels the request."""
        if request.candidate_count != 1:
            raise ValueError("streaming serves one candidate per request")
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        job = self._enqueue(
            request, sink=lambda item: loop.call_soon_threadsafe(items.put_nowait, item)
        )
        return AsyncTextStream(job, items)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; with ``drain`` finish those already accepted, otherwise fail
        them with ``EngineClosedError``; then stop the engine thread."""
        with self._submit_lock:
            if not self._closing:
                self._closing, self._drain = True, drain
                self._queue.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validation on the caller's thread -----------------------------------------------------
    def _enqueue(self, request: GenerationRequest, sink: Callable[[Any], None] | None) -> _Job:
        if (request.prompt_ids is None) == (request.messages is None):
            raise ValueError("give exactly one of prompt_ids and messages")
        if not 1 <= request.candidate_count <= self.max_batch_size:
            raise ValueError(f"candidate_count must be between 1 and {self.max_batch_size}")
        if request.messages is not None:
            with self._tokenizer_lock:
                prompt = list(render_prompt_ids(self.tokenizer, request.messages))
        else:
            prompt = [int(t) for t in request.prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty")
        if not all(0 <= t < self.vocab_size for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if len(prompt) >= self.max_positions:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; this model reads at most "
                f"{self.max_positions} tokens including the output"
            )
        if request.adapter is not None:
            key, folder = request.adapter
            check_adapter_folder(Path(folder), self.model_dir, self.base_ref, f"adapter {key}")
        job = _Job(request, prompt, sink)
        with self._submit_lock:  # never queued behind close()'s wake-up once the thread is gone
            if self._closing:
                raise EngineClosedError("the engine is closed")
            self._queue.put(job)
        return job

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    if not self._admit():
                        break
                    if self._rows:
                        self._decode_step()
                except Exception as exc:  # never let the loop die with requests in flight
                    logger.exception("engine step failed; failing the requests in the batch")
                    self._fail_batch(exc)
        self._fail_everything(EngineClosedError("the engine was closed"))
        logger.info("engine stopped")

    def _admit(self) -> bool:
        """Move queued requests into the batch. Returns False when the engine should stop."""
        self._drain_queue()
        if self._closing and not self._drain:
            return False
        if not self._rows and not self._waiting:
            if self._closing:
                return False
            first = self._queue.get()  # idle: sleep until there is work
            if first is None:
                return True  # woken by close(): the next call decides
            self._waiting.append(first)
            if self.batch_window > 0:
                time.sleep(self.batch_window)  # let concurrent requests share the prefill
            self._drain_queue()
        self._start_jobs(self._take_admissible())
        return True

    def _drain_queue(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._waiting.append(job)

    def _take_admissible(self) -> list[tuple[_Job, str | None]]:
        """Waiting jobs that fit in the batch, first come first served, adapters loaded and
        pinned (one pin per row)."""
        taken: list[tuple[_Job, str | None]] = []
        room = self.max_batch_size - len(self._rows)
        while self._waiting and room >= self._waiting[0].n:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            key = None
            if job.request.adapter is not None:
                key, folder = job.request.adapter
                try:
                    self.adapters.ensure(key, Path(folder))
                except AdapterCacheFull:
                    break  # every loaded adapter is in use: retry when rows finish
                except Exception as exc:
                    self._waiting.popleft()
                    job.fail(exc if isinstance(exc, AdapterError) else AdapterError(str(exc)))
                    continue
                for _ in range(job.n):
                    self.adapters.pin(key)
            self._waiting.popleft()
            taken.append((job, key))
            room -= job.n
        return taken

    def _start_jobs(self, taken: list[tuple[_Job, str | None]]) -> None:
        """Prefill newly admitted prompts, draw their first tokens and merge their rows into the
        running batch. A failure fails these requests only; the running batch goes on."""
        if not taken:
            return
        taken.sort(key=lambda t: t[1] or "")  # rows of one adapter side by side: cheaper LoRA
        try:
            rows, cache, mask = self._prefill(taken)
        except Exception as exc:
            logger.exception("prefill failed; failing the %d request(s) it was for", len(taken))
            for job, key in taken:
                if key is not None:
                    for _ in range(job.n):
                        self.adapters.unpin(key)
                job.fail(exc)
            return
        self._merge(rows, cache, mask)
        self._drop_finished()
        logger.debug("admitted %d request(s); batch has %d rows", len(taken), len(self._rows))

    def _prefill(self, taken: list[tuple[_Job, str | None]]):
        """One forward pass over the new prompts (left-padded); returns their rows (one per
        candidate, first token drawn), their KV cache and attention mask."""
        from transformers import DynamicCache

        jobs = [job for job, _ in taken]
        width = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)  # (G, T)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)  # (G, T)
        for g, job in enumerate(jobs):
            ids[g, width - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[g, width - len(job.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (G, T): 0.. on real tokens
        start = time.perf_counter()
        self.adapters.select([key for _, key in taken])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(config=self._config),
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats["prefills"] += 1
        self.stats["prefill_seconds"] += time.perf_counter() - start
        self.stats["requests"] += len(jobs)
        logits = out.logits[:, -1, :]  # (G, V)
        cache = out.past_key_values
        if any(job.n > 1 for job in jobs):
            # One row per candidate: a prompt's cache row is copied for each of its candidates.
            index = torch.tensor([g for g, job in enumerate(jobs) for _ in range(job.n)])
            cache = _cache_from([(k[index], v[index]) for k, v in _layers(cache)])
            mask, logits = mask[index], logits[index]  # (R, T), (R, V)
        rows = []
        for job, key in taken:
            p = job.request.params
            for c in range(job.n):
                rows.append(
                    _Row(
                        job=job,
                        index=c,
                        adapter_key=key,
                        sampling=RowSampling(p.temperature, p.top_k, p.top_p),
                        generator=make_generator(None if p.seed is None else p.seed + c),
                        max_new=min(p.max_output_tokens, self.max_positions - len(job.prompt)),
                        detok=_Detokenizer(self._decode),
                        pos=len(job.prompt),
                    )
                )
        tokens = sample_batch(logits, [r.sampling for r in rows], [r.generator for r in rows])
        for row, token in zip(rows, tokens, strict=True):
            self._accept(row, token)
        return rows, cache, mask

    def _decode_step(self) -> None:
        rows = self._rows
        inputs = torch.tensor([[r.next_token] for r in rows])  # (B, 1)
        positions = torch.tensor([[r.pos] for r in rows])  # (B, 1)
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        start = time.perf_counter()
        self.adapters.select([r.adapter_key for r in rows])
        out = self.model(
            input_ids=inputs,
            attention_mask=mask,  # (B, L + 1)
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._cache, self._mask = out.past_key_values, mask
        self.stats["steps"] += 1
        self.stats["step_seconds"] += time.perf_counter() - start
        self.stats["row_steps"] += len(rows)
        for r in rows:
            r.pos += 1
        tokens = sample_batch(
            out.logits[:, -1, :], [r.sampling for r in rows], [r.generator for r in rows]
        )
        for row, token in zip(rows, tokens, strict=True):
            if row.job.cancelled:
                row.done = True
                continue
            self._accept(row, token)
        self._drop_finished()

    def _accept(self, row: _Row, token: int) -> None:
        """Record a drawn token: stop, or stream the text that can no longer become part of a
        stop sequence."""
        row.generated += 1
        row.job.completion_tokens += 1
        if token in self.eos_ids:
            return self._finish(row, "stop", row.detok.flush())
        row.next_token = token
        delta = row.detok.push(token)
        if row.generated >= row.max_new:
            return self._finish(row, "length", delta + row.detok.flush())
        if delta:
            row.text += delta
            if self._trim_stop(row, len(delta)):
                return self._finish(row, "stop", "")
            self._emit(
                row, safe=len(row.text) - _held_back(row.text, row.job.request.stop_sequences)
            )

    def _trim_stop(self, row: _Row, new_chars: int) -> bool:
        """Cut the text at the first stop sequence that the new characters complete."""
        cut = None
        for stop in row.job.request.stop_sequences:
            if not stop:
                continue
            at = row.text.find(stop, max(0, len(row.text) - new_chars - len(stop) + 1))
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is None:
            return False
        row.text = row.text[:cut]
        return True

    def _finish(self, row: _Row, reason: str, tail: str) -> None:
        if tail:
            row.text += tail
            if self._trim_stop(row, len(tail)):
                reason = "stop"
        self._emit(row, safe=len(row.text))
        row.done = True
        job = row.job
        job.texts[row.index], job.reasons[row.index] = row.text, reason
        job.token_ids[row.index] = row.detok.ids
        job.remaining -= 1
        if job.remaining == 0 and not job.cancelled:
            result = GenerationResult(
                texts=job.texts,
                finish_reasons=job.reasons,
                prompt_tokens=len(job.prompt),
                completion_tokens=job.completion_tokens,
                token_ids=job.token_ids,
            )
            try:
                job.future.set_result(result)
            except InvalidStateError:  # cancelled meanwhile
                return
            job.emit(_END)

    def _emit(self, row: _Row, safe: int) -> None:
        if safe > row.emitted:
            row.job.emit(row.text[row.emitted : safe])
            row.emitted = safe

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Append new rows (with their cache and mask) to the running batch."""
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._cache = _cache_from(
            [
                (
                    torch.cat([_pad_left(k0, width), _pad_left(k1, width)]),
                    torch.cat([_pad_left(v0, width), _pad_left(v1, width)]),
                )
                for (k0, v0), (k1, v1) in zip(_layers(self._cache), _layers(cache), strict=True)
            ]
        )
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._rows = self._rows + rows

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch, and the cache columns no row needs any more."""
        for r in self._rows:
            if r.done is False and r.job.cancelled:
                r.done = True
        if not any(r.done for r in self._rows):
            return
        for r in self._rows:
            if r.done and r.adapter_key is not None:
                self.adapters.unpin(r.adapter_key)
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep)
        mask = self._mask[index]
        first = int(mask.any(dim=0).long().argmax())  # leftmost column some row still attends to
        self._cache = _cache_from(
            [(k[index, :, first:], v[index, :, first:]) for k, v in _layers(self._cache)]
        )
        self._mask = mask[:, first:]
        self._rows = [self._rows[i] for i in keep]

    def _fail_batch(self, exc: BaseException) -> None:
        for r in self._rows:
            if r.adapter_key is not None:
                self.adapters.unpin(r.adapter_key)
            r.job.fail(exc)
        self._rows, self._cache, self._mask = [], None, None

    def _fail_everything(self, exc: BaseException) -> None:
        self._fail_batch(exc)
        self._drain_queue()
        while self._waiting:
            self._waiting.popleft().fail(exc)

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop sequence: it is
    held back from a stream until the next tokens show whether the stop sequence follows."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension 2 (cache: (B, H, L, D)) or 1 (mask: (B, L)) on the left to ``width``."""
    dim = 2 if t.dim() == 4 else 1
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
