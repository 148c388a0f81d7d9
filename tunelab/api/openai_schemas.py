"""Request bodies of the OpenAI-compatible routes, as strict as OpenAI's own API.

Types are strict (``"stream": "yes"`` or ``"n": "2"`` is a 400, as OpenAI answers it), a field
OpenAI does not define is refused, and a field OpenAI defines but this server does not implement
(tools, response formats, log probabilities, penalties...) is refused with a 400 naming it unless
it has its no-op value: silently ignoring it would give the client an answer it did not ask for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.api.errors import ApiError
from tunelab.serving.generation import GenerationParams

MAX_TEXT = 1_000_000
"""Characters in one message or prompt (the body limit bounds the whole request too)."""

Text = Annotated[str, Field(max_length=MAX_TEXT)]
ModelName = Annotated[str, Field(min_length=1, max_length=140, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""A model's name: which names exist is the resolver's business; control characters never
belong in one (a NUL would reach the filesystem as an error, not a lookup)."""
Stop = Annotated[str, Field(min_length=1, max_length=256)]


def _off(value: Any) -> bool:
    """The no-op value of an option: absent, null, false, zero or empty."""
    return value in (None, False, 0, "", [], {})


# field -> (is its value one this server can honour?, what to say when it is not)
_NOT_IMPLEMENTED: dict[str, tuple[Any, str]] = {
    "tools": (_off, "tool calling is not supported"),
    "tool_choice": (lambda v: v in (None, "none"), "tool calling is not supported"),
    "functions": (_off, "function calling is not supported"),
    "function_call": (lambda v: v in (None, "none"), "function calling is not supported"),
    "response_format": (
        lambda v: v is None or v == {"type": "text"},
        "only the text response format is supported",
    ),
    "logprobs": (_off, "log probabilities are not supported"),
    "top_logprobs": (_off, "log probabilities are not supported"),
    "logit_bias": (_off, "logit_bias is not supported"),
    "presence_penalty": (_off, "presence_penalty is not supported (give 0 or leave it out)"),
    "frequency_penalty": (_off, "frequency_penalty is not supported (give 0 or leave it out)"),
    "modalities": (lambda v: v in (None, ["text"]), "only text output is supported"),
    "audio": (_off, "audio output is not supported"),
    "prediction": (_off, "predicted outputs are not supported"),
    "reasoning_effort": (_off, "reasoning_effort is not supported"),
    "web_search_options": (_off, "web search is not supported"),
    "verbosity": (_off, "verbosity is not supported"),
    "best_of": (lambda v: v in (None, 1), "best_of is not supported (give 1 or leave it out)"),
    "echo": (_off, "echo is not supported"),
    "suffix": (_off, "suffix (insertion) is not supported"),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    include_obfuscation: bool = False
    """Accepted and ignored: padding against length side channels, needless on a self-hosted
    server."""


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelName
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1000, description="Extension: 0 disables.")
    max_tokens: int | None = Field(None, ge=1, le=8192)
    n: int = Field(1, ge=1, le=8)
    stop: Stop | Annotated[list[Stop], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    # Accepted and ignored: they describe the caller, not the answer.
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    # Defined by OpenAI, not implemented here: refused unless off (see _NOT_IMPLEMENTED).
    logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    def refuse_unimplemented(self) -> None:
        for field in self.model_fields_set:
            check = _NOT_IMPLEMENTED.get(field)
            if check is not None and not check[0](getattr(self, field)):
                raise ApiError(
                    400, "unsupported_parameter", f"{field}: {check[1]}", {"param": field}
                )
        if self.stream and self.n != 1:
            raise ApiError(
                400, "unsupported_parameter", "n: streaming serves n=1 only", {"param": "n"}
            )
        if self.stream_options is not None and not self.stream:
            raise ApiError(
                400,
                "invalid_request",
                "stream_options: only allowed when stream is true",
                {"param": "stream_options"},
            )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_limit(self) -> int:
        return self.max_tokens or 256

    def params(self) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_output_tokens=self.output_limit(),
            seed=self.seed,
        )

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"] = Field(..., description="Only text parts: this server reads text.")
    text: str = Field(..., max_length=MAX_TEXT)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=1000)]
    name: str | None = Field(None, max_length=64, description="Accepted and ignored.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    # Accepted and ignored: storage, billing and caching hints of OpenAI's own service.
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=32)
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    # Not implemented: refused unless off.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    top_logprobs: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None

    def output_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256

    def chat_messages(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system turn.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class CompletionRequest(_OpenAIRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=64)] = Field(
        ..., description="A prompt (or up to 64) is one user turn each, as input_text in training."
    )
    best_of: Any = None
    echo: Any = None
    suffix: Any = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelName
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)] = Field(
        ..., description="A text or a list of up to 2048 texts."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=8192)
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")
