"""Request bodies of the Vertex-shaped routes: ``:predict`` (text and chat instances, PaLM
style) and ``:generateContent`` (Gemini's ``contents`` / ``systemInstruction`` /
``generationConfig``).

Vertex's SDK sends ``:predict`` parameters as a protobuf ``Value``, whose numbers are doubles
(``256.0``): whole-number fields accept an integral float, never a string or a bool. Field names
are Google's JSON names (lowerCamelCase); Gemini bodies also accept the proto names
(``max_output_tokens``), as Google's JSON parser does. Unknown fields are refused, and so are
Gemini options this server does not implement (tools, response schemas, penalties...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr
from pydantic.alias_generators import to_camel

from tunelab.api.errors import ApiError

MAX_TEXT = 1_000_000


def _number(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise ValueError("must be a number")
    return value


Whole = Annotated[int, BeforeValidator(_number)]
Number = Annotated[float, BeforeValidator(_number)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]


# -- :predict ---------------------------------------------------------------------------------
class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: StrictStr | None = Field(None, max_length=32, description="Vertex's name for the role.")
    role: StrictStr | None = Field(None, max_length=32)
    content: Text


class ExampleTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: Text
    author: StrictStr | None = Field(None, max_length=32)


class Example(BaseModel):
    """A chat instance's example exchange: shown to the model before the conversation."""

    model_config = ConfigDict(extra="forbid")
    input: ExampleTurn
    output: ExampleTurn


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text | None = None
    content: Text | None = Field(None, description="Alias of prompt.")
    messages: list[Message] | None = Field(None, max_length=1000)
    context: Text | None = Field(None, description="System instruction.")
    examples: list[Example] | None = Field(None, max_length=100)
    # Embedding models (tunelab/api/routes/embeddings.py): Vertex's task type and document title.
    task_type: StrictStr | None = Field(None, max_length=32)
    title: StrictStr | None = Field(None, max_length=100_000)


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: Number = Field(0.2, ge=0, le=2)
    maxOutputTokens: Whole = Field(256, ge=1, le=8192)
    topP: Number = Field(0.8, gt=0, le=1)
    topK: Whole = Field(40, ge=0, le=1000)
    candidateCount: Whole = Field(1, ge=1, le=8)
    stopSequences: list[Annotated[StrictStr, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16
    )
    seed: Whole | None = Field(None, ge=-(2**63), lt=2**64)
    # Embedding models only: truncate vectors to this size; refuse over-long inputs if false.
    outputDimensionality: Whole | None = Field(None, ge=1, le=8192)
    autoTruncate: StrictBool = True


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Instance] = Field(..., min_length=1, max_length=64)
    parameters: Parameters = Field(default_factory=Parameters)


# -- :generateContent -------------------------------------------------------------------------
class _Proto(BaseModel):
    """Google's JSON: lowerCamelCase names, proto (snake_case) names accepted too."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, validate_by_name=True, validate_by_alias=True
    )


class Part(_Proto):
    text: Text = Field(..., description="Text only: this server reads and writes text.")


class Content(_Proto):
    role: StrictStr | None = Field(None, max_length=16)
    """``user`` or ``model`` in ``contents``; ignored in ``systemInstruction``."""
    parts: list[Part] = Field(..., min_length=1, max_length=1000)

    def text(self) -> str:
        return "".join(p.text for p in self.parts)


class GenerationConfig(_Proto):
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    top_k: Whole | None = Field(None, ge=0, le=1000)
    candidate_count: Whole = Field(1, ge=1, le=8)
    max_output_tokens: Whole | None = Field(None, ge=1, le=8192)
    stop_sequences: list[Annotated[StrictStr, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16
    )
    seed: Whole | None = Field(None, ge=-(2**31), lt=2**31)
    response_mime_type: Literal["text/plain"] | None = None
    # Defined by Gemini, not implemented here: refused unless off.
    presence_penalty: Any = None
    frequency_penalty: Any = None
    response_logprobs: Any = None
    logprobs: Any = None
    response_schema: Any = None
    response_json_schema: Any = None
    response_modalities: Any = None
    thinking_config: Any = None


class GenerateContentRequest(_Proto):
    contents: list[Content] = Field(..., min_length=1, max_length=1000)
    system_instruction: Content | None = None
    generation_config: GenerationConfig = Field(default_factory=GenerationConfig)
    model: StrictStr | None = Field(None, max_length=300, description="Ignored: the path names it.")
    labels: dict[str, StrictStr] | None = Field(None, max_length=64, description="Ignored.")
    safety_settings: list[dict[str, Any]] | None = Field(
        None, max_length=32, description="Accepted: this server runs no safety classifier."
    )
    # Defined by Gemini, not implemented here: refused unless off.
    tools: Any = None
    tool_config: Any = None
    cached_content: Any = None

    def refuse_unimplemented(self) -> None:
        def off(value: Any) -> bool:
            return value in (None, False, 0, "", [], {})

        for name in ("tools", "tool_config", "cached_content"):
            if not off(getattr(self, name)):
                _unsupported(to_camel(name))
        config = self.generation_config
        for name in (
            "presence_penalty",
            "frequency_penalty",
            "response_logprobs",
            "logprobs",
            "response_schema",
            "response_json_schema",
            "thinking_config",
        ):
            if not off(getattr(config, name)):
                _unsupported(f"generationConfig.{to_camel(name)}")
        if config.response_modalities not in (None, [], ["TEXT"]):
            _unsupported("generationConfig.responseModalities")

    def messages(self) -> list[dict[str, str]]:
        system = (
            [{"role": "system", "content": self.system_instruction.text()}]
            if self.system_instruction
            else []
        )
        turns = []
        for i, c in enumerate(self.contents):
            if c.role not in (None, "user", "model"):
                raise ApiError(
                    400,
                    "invalid_request",
                    f"contents[{i}].role: {c.role!r} is not one of 'user', 'model'",
                    {"param": f"contents[{i}].role"},
                )
            turns.append(
                {"role": "assistant" if c.role == "model" else "user", "content": c.text()}
            )
        return system + turns


def _unsupported(field: str) -> None:
    raise ApiError(
        400, "unsupported_parameter", f"{field}: not supported by this server", {"param": field}
    )
