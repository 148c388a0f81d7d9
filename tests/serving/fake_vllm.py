"""A stand-in for vLLM's OpenAI-compatible server, for the fast tests of TuneLab's forwarding:
the routes TuneLab calls (models, LoRA load/unload, completions with streaming), vLLM's error
shapes, and a record of every call. Its answers are made from the request (the model name and
the prompt's length), so a test can tell which adapter and which prompt reached it."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

BASE = "tiny-base"
KEY = "fake-vllm-key"

MAX_LORA_RANK = 16
"""As TuneLab starts vLLM by default (``--max-lora-rank 16``)."""
REFUSE_MAX_TOKENS = 13
"""A request with this max_tokens is refused as vLLM refuses a bad one (400)."""
FAIL_MAX_TOKENS = 17
"""A request with this max_tokens fails inside the fake vLLM (500)."""


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status_code=status,
    )


def answer(model: str, prompt: list[int], index: int = 0) -> str:
    return f"{model} read {len(prompt)} tokens as candidate {index}"


def make_app(calls: list, loaded: dict[str, str]) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if request.url.path.startswith("/v1") and (
            request.headers.get("authorization") != f"Bearer {KEY}"
        ):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health():
        return {}

    @app.get("/v1/models")
    def models():
        data = [{"id": BASE, "object": "model", "root": "/models/tiny", "parent": None}]
        data += [{"id": n, "object": "model", "root": p, "parent": BASE} for n, p in loaded.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        body = await request.json()
        calls.append(("load", body))
        name, path = body["lora_name"], Path(body["lora_path"])
        if name in loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if (
            not (path / "adapter_config.json").is_file()
            or not (path / "adapter_model.safetensors").is_file()
        ):
            return _error(400, f"No adapter found for {path}")
        rank = json.loads((path / "adapter_config.json").read_text())["r"]
        if rank > MAX_LORA_RANK:
            return _error(400, f"LoRA rank {rank} is greater than max_lora_rank {MAX_LORA_RANK}.")
        loaded[name] = str(path)
        return JSONResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request):
        body = await request.json()
        calls.append(("unload", body))
        if loaded.pop(body["lora_name"], None) is None:
            return _error(
                404, f"The lora adapter '{body['lora_name']}' cannot be found.", "NotFoundError"
            )
        return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        calls.append(("completions", body))
        model, prompt = body["model"], body["prompt"]
        if model != BASE and model not in loaded:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if body.get("max_tokens") == REFUSE_MAX_TOKENS:
            return _error(400, "This model's maximum context length is 2048 tokens.")
        if body.get("max_tokens") == FAIL_MAX_TOKENS:
            return _error(500, "EngineCore encountered an issue.", "InternalServerError")
        texts = [answer(model, prompt, i) for i in range(body.get("n", 1))]
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": sum(len(t.split()) for t in texts),
            "total_tokens": len(prompt) + sum(len(t.split()) for t in texts),
        }
        if not body.get("stream"):
            choices = [
                {"index": i, "text": t, "finish_reason": "length" if i else "stop"}
                for i, t in enumerate(texts)
            ]
            return {"id": "cmpl-1", "object": "text_completion", "choices": choices, "usage": usage}

        def events():
            words = texts[0].split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunk = {"index": 0, "text": piece, "finish_reason": None}
                yield f"data: {json.dumps({'choices': [chunk], 'usage': None})}\n\n"
            last = {"index": 0, "text": "", "finish_reason": "stop"}
            yield f"data: {json.dumps({'choices': [last], 'usage': None})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
