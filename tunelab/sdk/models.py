"""Models as Vertex's SDK shapes them: ``TextGenerationModel.from_pretrained(base)
.get_tuned_model(name).predict(...)``, ``ChatModel(...).start_chat().send_message(...)``,
``TextEmbeddingModel.from_pretrained(...).get_embeddings([...])``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tunelab.sdk.client import client
from tunelab.sdk.tuning import TuningJob, compute, submit


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

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """This tuned model's kept checkpoints (``name`` or ``name@version``): step, epoch,
        ``metrics`` (train/eval loss and accuracy), ``evaluation`` (tunelab eval's metrics on
        the validation set) and ``model``, the reference that serves it
        (``get_tuned_model(c["model"]).predict(...)``)."""
        name, version = self._name_and_version()
        params = {"version": version} if version else None
        path = f"/v1/tunedModels/{quote(name, safe='')}/checkpoints"
        return client().request("GET", path, params=params)["checkpoints"]

    def promote_checkpoint(self, step: int) -> TextGenerationModel:
        """Register the kept checkpoint at ``step`` as the next version; that version's model."""
        name, version = self._name_and_version()
        params = {"version": version} if version else None
        path = f"/v1/tunedModels/{quote(name, safe='')}/checkpoints/{int(step)}:promote"
        made = client().request("POST", path, params=params)
        return type(self)(f"{made['name']}@{made['version']}", base_model=self.base_model)

    def _name_and_version(self) -> tuple[str, int | None]:
        name, _, version = self.model.partition("@")
        return name, int(version) if version.isdigit() else None

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

    def tune_model_rlhf(
        self,
        *,
        prompt_data: str | Path,
        preference_data: str | Path,
        model_display_name: str,
        prompt_sequence_length: int | None = None,
        target_sequence_length: int | None = None,
        reward_model_learning_rate_multiplier: float | None = None,
        reinforcement_learning_rate_multiplier: float | None = None,
        reward_model_train_steps: int | None = None,
        reinforcement_learning_train_steps: int | None = None,
        kl_coeff: float | None = None,
        instruction: str | None = None,
        eval_data: str | Path | None = None,
        workers: int | None = None,
        accelerator: str | None = None,
        **config: Any,
    ) -> TuningJob:
        """RLHF with Vertex's parameters (``TextGenerationModel.tune_model_rlhf``): a reward
        model on the preference pairs, then reinforcement learning on the prompts. Each data
        argument is a JSONL path to upload or a dataset id; None leaves RLHFConfig's default.
        ``workers``: training processes sharing each batch; ``accelerator``: cpu, cuda or
        auto."""
        return submit(
            "rlhf",
            model_display_name,
            {"preference": preference_data, "prompts": prompt_data, "eval": eval_data},
            {
                "base_model": self.model,
                "prompt_sequence_length": prompt_sequence_length,
                "target_sequence_length": target_sequence_length,
                "reward_model_learning_rate_multiplier": reward_model_learning_rate_multiplier,
                "reinforcement_learning_rate_multiplier": reinforcement_learning_rate_multiplier,
                "reward_model_train_steps": reward_model_train_steps,
                "reinforcement_learning_train_steps": reinforcement_learning_train_steps,
                "kl_coeff": kl_coeff,
                "instruction": instruction,
                **compute(workers, accelerator),
                **config,
            },
        )

    def tune_model_dpo(
        self,
        *,
        preference_data: str | Path,
        model_display_name: str,
        beta: float | None = None,
        epochs: int | None = None,
        train_steps: int | None = None,
        learning_rate_multiplier: float | None = None,
        adapter_size: int | None = None,
        validation_data: str | Path | None = None,
        workers: int | None = None,
        accelerator: str | None = None,
        **config: Any,
    ) -> TuningJob:
        """Direct preference optimisation on preference pairs (Vertex's preference-tuning
        parameters: ``beta``, ``epochs``, ``learning_rate_multiplier``, ``adapter_size``).
        ``workers``: training processes sharing each batch; ``accelerator``: cpu, cuda or
        auto."""
        return submit(
            "dpo",
            model_display_name,
            {"preference": preference_data, "validation": validation_data},
            {
                "base_model": self.model,
                "beta": beta,
                "epochs": epochs,
                "train_steps": train_steps,
                "learning_rate_multiplier": learning_rate_multiplier,
                "adapter_size": adapter_size,
                **compute(workers, accelerator),
                **config,
            },
        )

    def tune_model_rft(
        self,
        *,
        training_data: str | Path,
        grader: dict[str, Any] | str | Path,
        model_display_name: str,
        validation_data: str | Path | None = None,
        train_steps: int | None = None,
        learning_rate_multiplier: float | None = None,
        kl_coeff: float | None = None,
        samples_per_prompt: int | None = None,
        pass_threshold: float | None = None,
        accelerator: str | None = None,
        **config: Any,
    ) -> TuningJob:
        """Reinforcement fine-tuning toward a grader (``tunelab tune rft``): ``grader`` is the
        grader as a dict or the path of its JSON file; the data are prompts with the fields the
        grader reads (a JSONL path to upload or a dataset id). ``accelerator``: cpu, cuda or
        auto (RFT trains in one process: it has no ``workers``)."""
        if not isinstance(grader, dict):
            import json

            grader = json.loads(Path(grader).read_text(encoding="utf-8"))
        return submit(
            "rft",
            model_display_name,
            {"train": training_data, "validation": validation_data},
            {
                "base_model": self.model,
                "grader": grader,
                "train_steps": train_steps,
                "learning_rate_multiplier": learning_rate_multiplier,
                "kl_coeff": kl_coeff,
                "samples_per_prompt": samples_per_prompt,
                "pass_threshold": pass_threshold,
                **compute(None, accelerator),
                **config,
            },
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
        message_history: list[dict[str, str]] | None = None,
    ) -> ChatSession:
        """``message_history`` continues a conversation, as Vertex's does: earlier turns as
        ``{"author": "user" | "model", "content": ...}``, oldest first."""
        session = ChatSession(
            self, context, _parameters(temperature, max_output_tokens, top_p, top_k, None, None)
        )
        for i, turn in enumerate(message_history or []):
            if turn.get("author") not in ("user", "model") or not isinstance(
                turn.get("content"), str
            ):
                raise ValueError(
                    f"message_history[{i}]: expected {{'author': 'user' or 'model', "
                    f"'content': text}}, got {turn!r}"
                )
        session.history = [
            {"author": t["author"], "content": t["content"]} for t in message_history or []
        ]
        return session


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

    def tune_model(
        self,
        *,
        training_data: str | Path,
        corpus_data: str | Path,
        queries_data: str | Path,
        model_display_name: str,
        test_data: str | Path | None = None,
        validation_data: str | Path | None = None,
        batch_size: int | None = None,
        train_steps: int | None = None,
        learning_rate_multiplier: float | None = None,
        output_dimensionality: int | None = None,
        workers: int | None = None,
        accelerator: str | None = None,
        **config: Any,
    ) -> TuningJob:
        """Embedding tuning as Vertex's ``TextEmbeddingModel.tune_model``: corpus and queries
        (JSONL), and labels (TSV query-id, corpus-id, score) for training, test and validation.
        ``workers``: training processes sharing each batch; ``accelerator``: cpu, cuda or
        auto."""
        return submit(
            "embedding",
            model_display_name,
            {
                "corpus": corpus_data,
                "queries": queries_data,
                "train_labels": training_data,
                "test_labels": test_data,
                "validation_labels": validation_data,
            },
            {
                "base_model": self.model,
                "batch_size": batch_size,
                "train_steps": train_steps,
                "learning_rate_multiplier": learning_rate_multiplier,
                "output_dimensionality": output_dimensionality,
                **compute(workers, accelerator),
                **config,
            },
        )
