"""The SDK's tuning calls name ``workers`` and ``accelerator`` (the CLI's ``--workers`` and
``--accelerator``): against a real server on loopback, each call's job is stored with the
config's ``processes`` and ``accelerator``, and a bad value is refused naming the field."""

import httpx
import pytest
from support import color_rows, preference_rows, write_jsonl

import tunelab
from tunelab.configs import DPOConfig, RLHFConfig, SFTConfig
from tunelab.configs.embedding import EmbeddingConfig
from tunelab.configs.rft import RFTConfig


@pytest.fixture
def sdk(live, api_key):
    tunelab.init(url=live.url, api_key=api_key)
    with httpx.Client(
        base_url=live.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        yield http


def stored_config(http, job) -> dict:
    """The job's config as the server stored it (then cancelled: no worker runs here)."""
    stored = http.get(f"/v1/tuningJobs/{job.resource_name}").json()
    assert http.post(f"/v1/tuningJobs/{job.resource_name}:cancel").status_code == 200
    return stored["config"]


def test_every_tuning_call_passes_workers_and_accelerator_into_the_job(sdk, tmp_path):
    from tunelab import TextEmbeddingModel, TextGenerationModel, sft

    base = "smollm2-135m-instruct"
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(8))
    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": "Q?", "answer": 1}] * 4)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "outage"}])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "down"}])
    labels = tmp_path / "labels.tsv"
    labels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    model = TextGenerationModel.from_pretrained(base)
    calls = {
        SFTConfig: lambda **kw: sft.train(
            source_model=base, train_dataset=train, tuned_model_display_name="w-sft", **kw
        ),
        DPOConfig: lambda **kw: model.tune_model_dpo(
            preference_data=prefs, model_display_name="w-dpo", **kw
        ),
        RLHFConfig: lambda **kw: model.tune_model_rlhf(
            prompt_data=prompts, preference_data=prefs, model_display_name="w-rlhf", **kw
        ),
        EmbeddingConfig: lambda **kw: TextEmbeddingModel.from_pretrained(
            "all-minilm-l6-v2"
        ).tune_model(
            training_data=labels,
            corpus_data=corpus,
            queries_data=queries,
            model_display_name="w-embedding",
            **kw,
        ),
    }
    for config_class, call in calls.items():
        config = config_class(**stored_config(sdk, call(workers=2, accelerator="cpu")))
        assert (config.processes, config.accelerator) == (2, "cpu"), config_class.__name__
        default = config_class(**stored_config(sdk, call()))  # not given: the config's default
        assert (default.processes, default.accelerator) == (1, "auto"), config_class.__name__

    rft = model.tune_model_rft(
        training_data=prompts,
        grader={"type": "numeric", "reference": "{{item.answer}}"},
        model_display_name="w-rft",
        accelerator="cpu",
    )
    assert RFTConfig(**stored_config(sdk, rft)).accelerator == "cpu"


def test_bad_workers_and_accelerator_are_refused_naming_the_field(sdk, tmp_path):
    from tunelab import TuneLabError, sft

    train = write_jsonl(tmp_path / "train.jsonl", color_rows(8))
    for kwargs, field in (
        ({"workers": 0}, "config.processes"),
        ({"accelerator": "tpu"}, "config.accelerator"),
    ):
        with pytest.raises(TuneLabError) as info:
            sft.train(
                source_model="smollm2-135m-instruct",
                train_dataset=train,
                tuned_model_display_name="w-bad",
                **kwargs,
            )
        assert [e["field"] for e in info.value.details["errors"]] == [field]
