"""The inference engine's scheduler: one base model in memory serving many LoRA adapters, with
continuous batching.

Requests from any thread go into a queue; one engine thread owns the model runner
(``runner.py``: prefill, decode, KV cache, per-row adapters, sampling, stop handling) and runs
the loop:

    admit   take waiting requests while the batch has room (up to ``max_batch_size`` rows; a
            request asking for n candidates takes n rows), load their adapters (pinned while in
            use) and hand them to the runner, which prefills them and merges them into the
            running batch
    decode  one runner step: one token for every row of the batch
    publish stream each row's new text to its request, and resolve the requests whose rows
            have all finished; finished rows have left the batch, so the next step admits new
            requests in their place

Thread model: only the engine thread touches torch. Callers get a
``concurrent.futures.Future`` (``submit``), a blocking iterator of text deltas (``stream``),
or the asyncio equivalents (``agenerate``, ``astream``), whose deltas reach the event loop
through ``call_soon_threadsafe``, so nothing blocks it. Bad requests (wrong base model, prompt
too long...) raise at once in the caller's thread. Cancelling the future, closing the stream or
cancelling the asyncio task frees the request's rows at the next step.
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

from tunelab.models import load_causal_lm
from tunelab.serving.adapters import (
    AdapterCache,
    AdapterCacheFull,
    AdapterError,
    check_adapter_folder,
)
from tunelab.serving.generation import GenerationParams
from tunelab.serving.precision_choice import choose_precision
from tunelab.serving.quantize import apply_precision
from tunelab.serving.runner import Detokenizer as _Detokenizer  # noqa: F401  (tests use it)
from tunelab.serving.runner import (
    Generation,
    GenerationResult,
    ModelRunner,
    PromptTooLongError,
    Row,
    RowGroup,
)
from tunelab.serving.threads import ThreadTuner

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterError",
    "AsyncTextStream",
    "Engine",
    "EngineClosedError",
    "GenerationRequest",
    "GenerationResult",
    "PromptTooLongError",
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
        self.adapter_key: str | None = None
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
    share its prefill. ``precision`` is the base model's number format (``quantize.py``: fp32,
    bf16, int8 weight-only, int8+bf16, int4+bf16, or auto: measured on this machine); ``threads`` the engine thread's torch threads (None: measured
    and re-chosen as the machine's load changes, ``threads.py``).
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
        precision: str = "fp32",
        threads: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.model_dir = Path(model_dir)
        self.base_ref = base_ref
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window_ms / 1000
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        base = load_causal_lm(self.model_dir).eval()
        choice = choose_precision(precision, base, device)
        if precision == "auto":
            logger.info("precision auto: %s (%s)", choice.precision, choice.reason)
        on_cpu = torch.device(device).type == "cpu"  # oneDNN packing is for CPU weights
        base = apply_precision(
            base, choice.precision, dense_rows=choice.dense_rows, prepack=on_cpu
        ).to(device)
        self.precision = choice.precision
        """The precision served in (``auto`` resolved)."""
        self.precision_choice = choice
        """How ``precision`` was chosen (for ``auto``: the measured row count from which
        int8+bf16 uses bf16, and the timings behind the choice)."""
        self.model = base
        most = torch.get_num_threads()
        self.threads = ThreadTuner([threads] if threads else sorted({1, most}))
        self.adapters = AdapterCache(base, max_adapters=max_adapters, max_bytes=max_adapter_bytes)
        self.runner = ModelRunner(base, tokenizer, adapters=self.adapters)

        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: deque[_Job] = deque()
        self._closing = False
        self._submit_lock = threading.Lock()
        self._drain = True
        self._to_drop: set[str] = set()
        """Adapter keys to unload (undeployed versions), unloaded by the engine thread, which
        owns the adapter cache, as soon as no batch row uses them."""
        self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict[str, float]:
        """The runner's counters since start: requests prefilled, prefill passes, decode steps,
        rows decoded over all steps (row_steps / steps is the mean batch size), seconds in
        each."""
        return self.runner.stats

    @property
    def eos_ids(self) -> frozenset[int]:
        """The tokens that end a completion (the runner's: the tokenizer's and the model's)."""
        return self.runner.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: frozenset[int]) -> None:
        self.runner.eos_ids = frozenset(ids)

    @property
    def _rows(self) -> list[Row]:
        return self.runner.rows

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
            prompt = self.runner.render(request.messages)
        else:
            prompt = request.prompt_ids
        prompt = self.runner.check_prompt(prompt)
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
                        self.runner.drop(lambda row: row.group.owner.cancelled)
                        rows = len(self._rows)
                        self.threads.before_step(rows)
                        start = time.perf_counter()
                        stepped = self.runner.step()
                        self.threads.after_step(time.perf_counter() - start, rows)
                        self._publish(stepped)
                except Exception as exc:  # never let the loop die with requests in flight
                    logger.exception("engine step failed; failing the requests in the batch")
                    self._fail_batch(exc)
        self._fail_everything(EngineClosedError("the engine was closed"))
        logger.info("engine stopped")

    def drop_adapter(self, key: str) -> None:
        """Unload an adapter (its version was undeployed) once no running row uses it."""
        with self._submit_lock:
            self._to_drop.add(key)
        self._queue.put(None)  # wake an idle engine thread to unload it now

    def _unload_dropped(self) -> None:
        with self._submit_lock:
            keys = set(self._to_drop)
        for key in keys:
            if key in self.adapters and self.adapters.pins(key):
                continue  # rows in flight finish first; tried again on the next step
            if key in self.adapters:
                self.adapters.evict(key)
            with self._submit_lock:
                self._to_drop.discard(key)

    def _admit(self) -> bool:
        """Move queued requests into the batch. Returns False when the engine should stop."""
        if self._to_drop:
            self._unload_dropped()
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

    def _take_admissible(self) -> list[_Job]:
        """Waiting jobs that fit in the batch, first come first served, adapters loaded and
        pinned (one pin per row)."""
        taken: list[_Job] = []
        room = self.max_batch_size - len(self._rows)
        while self._waiting and room >= self._waiting[0].n:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            if job.request.adapter is not None:
                key, folder = job.request.adapter
                try:
                    self.runner.reserve_adapter(key, Path(folder), job.n)
                except AdapterCacheFull:
                    break  # every loaded adapter is in use: retry when rows finish
                except Exception as exc:
                    self._waiting.popleft()
                    job.fail(exc if isinstance(exc, AdapterError) else AdapterError(str(exc)))
                    continue
                job.adapter_key = key
            self._waiting.popleft()
            taken.append(job)
            room -= job.n
        return taken

    def _start_jobs(self, jobs: list[_Job]) -> None:
        """Hand newly admitted requests to the runner (prefill, first token, merge). A failure
        fails these requests only; the running batch goes on."""
        if not jobs:
            return
        groups = [
            RowGroup(
                job.prompt,
                job.request.params,
                n=job.n,
                stop_sequences=job.request.stop_sequences,
                adapter_key=job.adapter_key,
                incremental=job.sink is not None,
                owner=job,
            )
            for job in jobs
        ]
        try:
            generations = self.runner.start(groups)
        except Exception as exc:
            logger.exception("prefill failed; failing the %d request(s) it was for", len(jobs))
            for job in jobs:
                job.fail(exc)
            return
        self._publish([row for gen in generations for row in gen.rows])
        logger.debug("admitted %d request(s); batch has %d rows", len(jobs), len(self._rows))

    def _publish(self, rows: list[Row]) -> None:
        """Stream the rows' new text; resolve the requests whose rows have all finished."""
        for row in rows:
            job: _Job = row.group.owner
            if job.cancelled:
                continue
            delta = row.take_delta()
            if delta:
                job.emit(delta)
            if row.done:
                self._resolve(job, row.generation)

    @staticmethod
    def _resolve(job: _Job, generation: Generation) -> None:
        if not generation.done or job.future.done():
            return
        try:
            job.future.set_result(generation.result())
        except InvalidStateError:  # cancelled meanwhile
            return
        job.emit(_END)

    def _fail_batch(self, exc: BaseException) -> None:
        failed = {id(r.group.owner): r.group.owner for r in self.runner.reset()}
        for job in failed.values():
            job.fail(exc)

    def _fail_everything(self, exc: BaseException) -> None:
        self._fail_batch(exc)
        self._drain_queue()
        while self._waiting:
            self._waiting.popleft().fail(exc)
