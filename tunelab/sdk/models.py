"""Models as Vertex's SDK shapes them: ``TextGenerationModel.from_pretrained(base)
.get_tuned_model(name).predict(...)``, ``ChatModel(...).start_chat().send_message(...)``,
``TextEmbeddingModel.from_pretrained(...).get_embeddings([...])``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.sdk.client import client


@dataclass
class TextGenerationResponse:
    text: str
    candidates: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def _parameters(
    temperature, max_output_tokens, top_p, top_k, candidate_count, stop_sequences
) -> dict[str, Any]:
    values = {
        "temperature": temperature,
        "maxOutputTokens": max_output_tokens,
        "topP": top_p,
        "topK": top_k,
        "candidateCount": candidate_count,
        "stopSequences": stop_sequences,
    }
    return {k: v for k, v in values.items() if v is not None}


class TextGenerationModel:
    def __init__(self, model: str, base_model: str | None = None) -> None:
        self.model = model
        self.base_model = base_model or model

    @classmethod
    def from_pretrained(cls, model_name: str) -> TextGenerationModel:
        return cls(model_name)

    def get_tuned_model(self, tuned_model_name: str) -> TextGenerationModel:
        """A tuned model (``name`` or ``name@version``) or its endpoint id."""
        return TextGenerationModel(tuned_model_name, base_model=self.base_model)

    def list_tuned_model_names(self) -> list[str]:
        return [
            m["name"]
            for m in client().request("GET", "/v1/tunedModels")["tuned_models"]
            if m["base_model"] == self.base_model
        ]

    def predict(
        self,
        prompt: str,
        *,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        candidate_count: int | None = None,
        stop_sequences: list[str] | None = None,
    ) -> TextGenerationResponse:
        body = {
            "instances": [{"prompt": prompt}],
            "parameters": _parameters(
                temperature, max_output_tokens, top_p, top_k, candidate_count, stop_sequences
            ),
        }
        raw = client().request("POST", f"/v1/endpoints/{self.model}:predict", json=body)
        prediction = raw["predictions"][0]
        return TextGenerationResponse(
            prediction["content"], [c["content"] for c in prediction["candidates"]], raw
        )


class ChatModel(TextGenerationModel):
    @classmethod
    def from_pretrained(cls, model_name: str) -> ChatModel:
        return cls(model_name)

    def get_tuned_model(self, tuned_model_name: str) -> ChatModel:
        return ChatModel(tuned_model_name, base_model=self.base_model)

    def start_chat(
        self,
        *,
        context: str | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> ChatSession:
        return ChatSession(
            self, context, _parameters(temperature, max_output_tokens, top_p, top_k, None, None)
        )


class ChatSession:
    """Keeps the conversation; each ``send_message`` sends it whole, as Vertex's chat does."""

    def __init__(self, model: ChatModel, context: str | None, parameters: dict[str, Any]) -> None:
        self.model, self.context, self.parameters = model, context, parameters
        self.history: list[dict[str, str]] = []

    def send_message(self, message: str, **overrides: Any) -> TextGenerationResponse:
        messages = [*self.history, {"author": "user", "content": message}]
        instance: dict[str, Any] = {"messages": messages}
        if self.context:
            instance["context"] = self.context
        params = {
            **self.parameters,
            **_parameters(
                overrides.get("temperature"),
                overrides.get("max_output_tokens"),
                overrides.get("top_p"),
                overrides.get("top_k"),
                None,
                None,
            ),
        }
        raw = client().request(
            "POST",
            f"/v1/endpoints/{self.model.model}:predict",
            json={"instances": [instance], "parameters": params},
        )
        text = raw["predictions"][0]["candidates"][0]["content"]
        self.history = [*messages, {"author": "model", "content": text}]
        return TextGenerationResponse(text, [text], raw)


class TextEmbeddingModel:
    """Embeddings from a base or tuned embedding model (served once embedding tuning lands)."""

    def __init__(self, model: str) -> None:
        self.model = model

    @classmethod
    def from_pretrained(cls, model_name: str) -> TextEmbeddingModel:
        return cls(model_name)

    def get_embeddings(self, texts: list[str]) -> list[list[float]]:
        raw = client().request(
            "POST",
            f"/v1/endpoints/{self.model}:predict",
            json={"instances": [{"content": t} for t in texts]},
        )
        return [p["embeddings"]["values"] for p in raw["predictions"]]
