"""A vLLM server as the engine behind TuneLab's inference routes.

:class:`VllmEngine` has the builtin engine's calling surface (``submit``, ``stream``, ``close``;
see ``engine.py``), so the OpenAI, Vertex and :predict routes use it unchanged: TuneLab keeps
auth, names, versions and quotas, renders the prompt exactly as the builtin engine does (the
base model's tokenizer and chat template, as in training) and sends vLLM the *token ids*, so
both engines read the same input. vLLM decodes and streams; its answers come back as TuneLab
results.

Adapters are vLLM LoRA modules named by their model version id (never a user's string). A
version is loaded with ``POST /v1/load_lora_adapter`` from a PEFT folder that TuneLab exports
(``tunelab models export --format peft``) into its own data folder, when it is deployed
(:meth:`sync_deployed`) or at its first request, and unloaded when it is undeployed. vLLM must
see that folder: run it on the same machine (TuneLab starts it, ``vllm_process.py``) or on a
shared volume.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tunelab.serving.engine import EngineClosedError, GenerationRequest
from tunelab.serving.runner import GenerationResult, check_prompt_ids

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 16
"""As the builtin engine's default batch size: the most candidates one request may ask for."""


class VllmError(RuntimeError):
    """vLLM answered with an error, or not at all. ``status`` is what TuneLab's routes answer:
    400 for a request vLLM refused, 502 for a vLLM failure, 503 when it cannot be reached."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class VllmEngine:
    """One vLLM server (one base model) serving TuneLab's adapters for it.

    ``adapter_folder(key, bundle)`` returns the PEFT folder vLLM loads for adapter ``key``
    (a model version id) whose TuneLab bundle is ``bundle``; the pool gives one that exports
    from the registry.
    """

    def __init__(
        self,
        url: str,
        base_dir: Path,
        tokenizer,
        *,
        base_ref: str | None,
        adapter_folder: Callable[[str, Path], Path],
        api_key: str | None = None,
        timeout: float = 600.0,
        workers: int = 32,
        on_close: Callable[[], None] | None = None,
    ):
        from tunelab.data.template import prompt_ids

        self.url = url.rstrip("/")
        self.model_dir = Path(base_dir)
        self.base_ref = base_ref
        self.tokenizer = tokenizer
        self._render = prompt_ids
        self._adapter_folder = adapter_folder
        self._on_close = on_close
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connect fast (a missing server is a 503 at once); generation may take long.
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tunelab-vllm")
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not re-entrant
        self._closed = False
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = int(config.get("max_position_embeddings") or 1 << 30)
        self.vocab_size = int(config["vocab_size"])
        self.eos_ids = _eos_ids(self.model_dir, tokenizer)
        self.served_model, self._loaded = self._discover()

    # -- vLLM's model list -----------------------------------------------------------------------
    def _discover(self) -> tuple[str, set[str]]:
        """(the base model's name in vLLM, the LoRA modules it already holds): a TuneLab that
        restarts against a running vLLM knows what is loaded."""
        data = self._call("GET", "/v1/models").get("data") or []
        bases = [m["id"] for m in data if not m.get("parent")]
        if not bases:
            raise VllmError(502, f"the vLLM server at {self.url} lists no base model")
        loras = {m["id"] for m in data if m.get("parent")}
        return bases[0], loras

    @property
    def loaded_adapters(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, key: str, bundle: Path) -> None:
        """Load adapter ``key`` into vLLM unless it holds it already."""
        with self._lock:
            if key in self._loaded:
                return
            folder = self._adapter_folder(key, Path(bundle))
            self._call(
                "POST", "/v1/load_lora_adapter", json={"lora_name": key, "lora_path": str(folder)}
            )
            self._loaded.add(key)
            logger.info("vLLM loaded adapter %s from %s", key, folder)

    def unload_adapter(self, key: str) -> bool:
        """Unload adapter ``key`` from vLLM; False if it was not loaded."""
        with self._lock:
            if key not in self._loaded:
                return False
            try:
                self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": key})
            except VllmError as exc:
                if exc.status != 404:  # vLLM restarted without it: it is gone all the same
                    raise
            self._loaded.discard(key)
            logger.info("vLLM unloaded adapter %s", key)
            return True

    def sync_deployed(self, deployed: dict[str, Path]) -> None:
        """Make vLLM hold exactly the deployed adapters of this base (key -> bundle): load the
        new ones, unload the ones no longer deployed. An adapter asked for by name without a
        deployment is loaded at its request and dropped at the next sync."""
        failed: list[VllmError] = []
        for key in sorted(self.loaded_adapters - set(deployed)):
            try:
                self.unload_adapter(key)
            except VllmError as exc:
                failed.append(exc)
        for key, bundle in deployed.items():
            try:  # one adapter vLLM refuses does not keep the others from loading
                self.load_adapter(key, bundle)
            except VllmError as exc:
                logger.error("vLLM did not load adapter %s: %s", key, exc)
                failed.append(exc)
        if failed:
            raise failed[0]

    # -- the engine's surface (any thread) -------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        body = self._body(request, stream=False)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        return self._pool.submit(self._complete, request, body)

    def generate(
        self, request: GenerationRequest, timeout: float | None = None
    ) -> GenerationResult:
        return self.submit(request).result(timeout)

    def stream(self, request: GenerationRequest) -> VllmTextStream:
        """Open the completion stream: vLLM's refusal raises here, before any delta."""
        if request.candidate_count != 1:
            raise ValueError("streaming serves one candidate per request")
        body = self._body(request, stream=True)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        self._ensure_adapter(request)
        http_request = self._http.build_request("POST", "/v1/completions", json=body)
        try:
            response = self._http.send(http_request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            response.read()
            response.close()
            raise _error_from(response)
        return VllmTextStream(response, body["prompt"])

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        self._closed = True
        self._pool.shutdown(wait=drain, cancel_futures=not drain)
        self._http.close()
        if self._on_close is not None:
            self._on_close()

    # -- internals -------------------------------------------------------------------------------
    def _body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The /v1/completions body, with the checks the builtin engine makes on the caller's
        thread (so a bad request is a 400 before anything is sent)."""
        if (request.prompt_ids is None) == (request.messages is None):
            raise ValueError("give exactly one of prompt_ids and messages")
        if not 1 <= request.candidate_count <= MAX_CANDIDATES:
            raise ValueError(f"candidate_count must be between 1 and {MAX_CANDIDATES}")
        if request.messages is not None:
            with self._tokenizer_lock:
                prompt = list(self._render(self.tokenizer, request.messages))
        else:
            prompt = request.prompt_ids
        prompt = check_prompt_ids(prompt, self.vocab_size, self.max_positions)
        p = request.params
        body: dict[str, Any] = {
            "model": request.adapter[0] if request.adapter else self.served_model,
            "prompt": prompt,
            "n": request.candidate_count,
            # As the builtin engine: the answer stops at the end of the context.
            "max_tokens": min(p.max_output_tokens, self.max_positions - len(prompt)),
            "temperature": p.temperature,
            "top_p": p.top_p if p.temperature > 0 else 1.0,
            "top_k": p.top_k if p.top_k > 0 else -1,
            "stop_token_ids": sorted(self.eos_ids),
            "skip_special_tokens": True,
            "stream": stream,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if request.stop_sequences:
            body["stop"] = [s for s in request.stop_sequences if s]
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _ensure_adapter(self, request: GenerationRequest) -> None:
        if request.adapter is not None:
            self.load_adapter(*request.adapter)

    def _complete(self, request: GenerationRequest, body: dict[str, Any]) -> GenerationResult:
        self._ensure_adapter(request)
        try:
            data = self._call("POST", "/v1/completions", json=body)
        except VllmError as exc:
            if exc.status != 404 or request.adapter is None:
                raise
            # vLLM restarted and lost the adapter: load it again, once.
            with self._lock:
                self._loaded.discard(request.adapter[0])
            self._ensure_adapter(request)
            data = self._call("POST", "/v1/completions", json=body)
        choices = sorted(data["choices"], key=lambda c: c["index"])
        usage = data.get("usage") or {}
        return GenerationResult(
            texts=[c["text"] for c in choices],
            finish_reasons=[_finish(c.get("finish_reason")) for c in choices],
            prompt_tokens=int(usage.get("prompt_tokens", len(body["prompt"]))),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_from(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            return {"text": response.text}

    def _unreachable(self, exc: Exception) -> VllmError:
        logger.warning("vLLM at %s cannot be reached: %s", self.url, exc)
        return VllmError(503, f"the vLLM server at {self.url} cannot be reached ({exc})")


class VllmTextStream:
    """Text deltas of one streamed completion; ``result`` resolves once the stream ends,
    ``close()`` drops the connection (vLLM then aborts the request)."""

    def __init__(self, response: httpx.Response, prompt: list[int]):
        self._response = response
        self._prompt_tokens = len(prompt)
        self._lines = response.iter_lines()
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}
        self._text_parts = 0
        self.result: Future[GenerationResult] = Future()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return self._next()
        except StopIteration:
            raise
        except httpx.TransportError as exc:
            self._fail(VllmError(502, f"the vLLM stream broke off: {exc}"))
            raise self.result.exception() from None
        except VllmError as exc:
            self._fail(exc)
            raise

    def _next(self) -> str:
        for line in self._lines:
            if not line.startswith("data:"):
                continue
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                error = event["error"]
                message = error.get("message", str(error)) if isinstance(error, dict) else error
                raise VllmError(502, f"vLLM: {message}")
            if event.get("usage"):
                self._usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("finish_reason"):
                    self._finish = choice["finish_reason"]
                text = choice.get("text") or ""
                if text:
                    self._text_parts += 1
                    return text
        self._response.close()
        if not self.result.done():
            self.result.set_result(
                GenerationResult(
                    texts=[],
                    finish_reasons=[_finish(self._finish)],
                    prompt_tokens=int(self._usage.get("prompt_tokens", self._prompt_tokens)),
                    completion_tokens=int(self._usage.get("completion_tokens", 0)),
                )
            )
        raise StopIteration

    def _fail(self, exc: BaseException) -> None:
        self._response.close()
        if not self.result.done():
            self.result.set_exception(exc)

    def close(self) -> None:
        self._response.close()
        if not self.result.done():
            self.result.cancel()

    def __enter__(self) -> VllmTextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finish(reason: str | None) -> str:
    """vLLM's finish reasons as the builtin engine's: ``stop`` or ``length``."""
    return "length" if reason == "length" else "stop"


def _error_from(response: httpx.Response) -> VllmError:
    """vLLM's error answer as a VllmError: a refused request stays a 400 (prompt or params the
    model cannot take), a missing model a 404 (an adapter vLLM lost), the rest a 502."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else None
        message = message or (body.get("detail") if isinstance(body, dict) else None) or str(body)
    except ValueError:
        message = response.text[:500]
    status = response.status_code
    if status in (400, 422):
        return VllmError(400, f"vLLM refused the request: {message}")
    if status == 404:
        return VllmError(404, f"vLLM: {message}")
    return VllmError(502, f"vLLM failed ({status}): {message}")


def _eos_ids(model_dir: Path, tokenizer) -> frozenset[int]:
    """The tokens that end a completion, as the builtin runner takes them: the tokenizer's end
    of sequence and the model's generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    path = model_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos]:
            if i is not None:
                ids.add(int(i))
    return frozenset(ids)
