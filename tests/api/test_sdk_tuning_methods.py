"""The SDK's tuning calls for every method, against a real server on loopback: each uploads its
files, creates the job the REST API would, with Vertex's parameter names mapped onto the
method's config; and ``from tunelab import ...`` gives the SDK's public names."""

import httpx
import pytest
from support import preference_rows, write_jsonl

import tunelab
from tunelab.configs import DPOConfig, RLHFConfig


@pytest.fixture
def sdk(live, api_key):
    tunelab.init(url=live.url, api_key=api_key)
    with httpx.Client(
        base_url=live.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        yield http


def _stored(http, job):
    """The job as the server stored it (then cancelled: no worker runs in these tests)."""
    stored = http.get(f"/v1/tuningJobs/{job.resource_name}").json()
    assert http.post(f"/v1/tuningJobs/{job.resource_name}:cancel").status_code == 200
    return stored


def test_public_sdk_names_import_from_tunelab():
    from tunelab import (
        ChatModel,
        TextEmbeddingModel,
        TextGenerationModel,
        TuneLabError,
        TuningJob,
        init,
        sdk,
        sft,
    )

    assert TextGenerationModel is sdk.TextGenerationModel and ChatModel is sdk.ChatModel
    assert TextEmbeddingModel is sdk.TextEmbeddingModel and TuneLabError is sdk.TuneLabError
    assert TuningJob is sdk.TuningJob and callable(init) and callable(sft.train)
    with pytest.raises(AttributeError):
        tunelab.NoSuchThing  # noqa: B018


def test_tune_model_rlhf_with_vertex_parameters(sdk, tmp_path):
    from tunelab import TextGenerationModel

    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"input_text": f"Q {i}?"} for i in range(16)]
    )
    job = TextGenerationModel.from_pretrained("smollm2-135m-instruct").tune_model_rlhf(
        prompt_data=prompts,
        preference_data=prefs,
        model_display_name="sdk-rlhf",
        reward_model_train_steps=3,
        reinforcement_learning_train_steps=2,
        kl_coeff=0.2,
        target_sequence_length=32,
        instruction="Answer in one sentence.",
    )
    stored = _stored(sdk, job)
    assert stored["method"] == "rlhf" and set(stored["datasets"]) == {"preference", "prompts"}
    config = RLHFConfig(**stored["config"])
    assert (config.reward_model_train_steps, config.reinforcement_learning_train_steps) == (3, 2)
    assert config.kl_coeff == 0.2 and config.instruction == "Answer in one sentence."
    assert config.base_model == "smollm2-135m-instruct"
    assert config.reward_model_learning_rate_multiplier == 1.0  # None left the default


def test_tune_model_dpo(sdk, tmp_path):
    from tunelab import TextGenerationModel

    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16))
    job = TextGenerationModel.from_pretrained("smollm2-135m-instruct").tune_model_dpo(
        preference_data=prefs, model_display_name="sdk-dpo", beta=0.3, train_steps=4
    )
    stored = _stored(sdk, job)
    assert stored["method"] == "dpo" and list(stored["datasets"]) == ["preference"]
    config = DPOConfig(**stored["config"])
    assert config.beta == 0.3 and config.train_steps == 4


def test_text_embedding_model_tune_model(sdk, tmp_path):
    from tunelab import TextEmbeddingModel

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "Pelican access"}\n{"_id": "d2", "text": "outage"}\n')
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "PQS access"}\n{"_id": "q2", "text": "down"}\n')
    labels = tmp_path / "train.tsv"
    labels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    job = TextEmbeddingModel.from_pretrained("all-minilm-l6-v2").tune_model(
        training_data=labels,
        corpus_data=corpus,
        queries_data=queries,
        model_display_name="sdk-embedding",
        train_steps=5,
        batch_size=2,
    )
    stored = _stored(sdk, job)
    assert stored["method"] == "embedding"
    assert set(stored["datasets"]) == {"corpus", "queries", "train_labels"}
    assert stored["config"]["train_steps"] == 5 and stored["config"]["batch_size"] == 2


def test_tune_model_rft_with_a_grader_file(sdk, tmp_path):
    import json

    from tunelab import TextGenerationModel
    from tunelab.configs.rft import RFTConfig

    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"input_text": f"Q {i}?", "answer": i} for i in range(8)]
    )
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps({"type": "numeric", "reference": "{{item.answer}}"}))
    job = TextGenerationModel.from_pretrained("smollm2-135m-instruct").tune_model_rft(
        training_data=data,
        grader=grader,
        model_display_name="sdk-rft",
        train_steps=3,
        kl_coeff=0.0,
    )
    stored = _stored(sdk, job)
    assert stored["method"] == "rft" and list(stored["datasets"]) == ["train"]
    config = RFTConfig(**stored["config"])
    assert config.grader.type == "numeric" and config.grader.reference == "{{item.answer}}"
    assert (config.train_steps, config.kl_coeff, config.samples_per_prompt) == (3, 0.0, 4)


def test_an_invalid_grader_is_refused_with_where(sdk, tmp_path):
    from tunelab import TextGenerationModel, TuneLabError

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": "Q?", "a": 1}] * 4)
    bad = {
        "type": "all",
        "graders": [{"type": "string_check", "operation": "is", "reference": "x"}],
    }
    with pytest.raises(TuneLabError) as info:
        TextGenerationModel.from_pretrained("smollm2-135m-instruct").tune_model_rft(
            training_data=data, grader=bad, model_display_name="sdk-rft-bad"
        )
    errors = info.value.details["errors"]
    assert [e["field"] for e in errors] == ["config.grader.graders.0.operation"]
    assert "'regex'" in errors[0]["message"]
