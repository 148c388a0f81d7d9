"""A tuning job's datasets are checked against its method's roles before it is queued, on every
face: a misspelt or foreign role (stored and silently ignored before) and a missing required
role (which only failed the job's validate step) are a 422 naming the field and the roles the
method takes; DPO's pairs are still accepted as ``train`` (the REST ``train_dataset``)."""

import pytest
from support import preference_rows, write_jsonl

from tunelab.jobs.methods import METHODS, DatasetRoleError, check_dataset_roles


def _upload(http, path):
    r = http.post("/v1/datasets", files={"file": (path.name, path.read_bytes())})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture
def ids(http, tmp_path):
    rows = [{"input_text": f"q{i}", "output_text": f"a{i}"} for i in range(4)]
    return {
        "rows": _upload(http, write_jsonl(tmp_path / "rows.jsonl", rows)),
        "pairs": _upload(http, write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))),
    }


def _post(http, tiny_base, method, **body):
    return http.post(
        "/v1/tuningJobs",
        json={
            "method": method,
            "tuned_model_display_name": "roles",
            "config": {"base_model": tiny_base},
            **body,
        },
    )


def test_a_misspelt_role_is_refused_naming_the_field_and_the_method_s_roles(http, tiny_base, ids):
    r = _post(http, tiny_base, "sft", datasets={"trainn": ids["rows"]})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"]["field"] == "datasets.trainn"
    assert error["details"]["allowed_roles"] == ["train", "validation"]
    assert "sft jobs take no 'trainn' dataset" in error["message"]
    assert "did you mean 'train'?" in error["message"]
    # A valid train role with it does not let the stray one through.
    r = _post(
        http, tiny_base, "sft", train_dataset=ids["rows"], datasets={"valdation": ids["rows"]}
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "datasets.valdation"
    assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []  # nothing queued


def test_a_role_of_another_method_and_a_missing_required_role_are_refused_together(
    http, tiny_base, ids
):
    # train_dataset is SFT's role: an RLHF job would have ignored it, then failed validation.
    r = _post(
        http, tiny_base, "rlhf", train_dataset=ids["rows"], datasets={"preference": ids["pairs"]}
    )
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert details["allowed_roles"] == ["preference", "prompts", "eval"]
    errors = {e["field"]: e["message"] for e in details["errors"]}
    assert set(errors) == {"train_dataset", "datasets.prompts"}
    assert "rlhf jobs take no 'train' dataset" in errors["train_dataset"]
    assert "need a 'prompts' dataset" in errors["datasets.prompts"]
    r = _post(http, tiny_base, "embedding", datasets={"corpus": ids["rows"]})
    fields = {e["field"] for e in r.json()["error"]["details"]["errors"]}
    assert r.status_code == 422 and fields == {"datasets.queries", "datasets.train_labels"}
    # A misspelt role is the error even when its id names no dataset (not a 404 on the id).
    r = _post(http, tiny_base, "dpo", datasets={"preferences": "ds-none"})
    assert r.status_code == 422 and "did you mean 'preference'?" in r.text
    assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []


def test_dpo_takes_its_pairs_as_preference_or_train_but_not_both(http, tiny_base, ids):
    as_train = _post(http, tiny_base, "dpo", train_dataset=ids["pairs"])
    assert as_train.status_code == 201, as_train.text
    assert as_train.json()["datasets"] == {"train": ids["pairs"]}
    both = _post(
        http, tiny_base, "dpo", train_dataset=ids["pairs"], datasets={"preference": ids["pairs"]}
    )
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    by_role = _post(
        http,
        tiny_base,
        "dpo",
        datasets={"preference": ids["pairs"], "validation": ids["pairs"]},
    )
    assert by_role.status_code == 201, by_role.text


def test_the_sdk_gets_the_same_refusal(live, api_key, tiny_base, tmp_path):
    import tunelab
    from tunelab import TextGenerationModel, TuneLabError

    tunelab.init(url=live.url, api_key=api_key)
    pairs = write_jsonl(tmp_path / "p.jsonl", preference_rows(4))
    model = TextGenerationModel.from_pretrained(tiny_base)
    with pytest.raises(TuneLabError) as refused:
        # The prompts are missing: RLHF's prompt_data given as None (an SDK caller's slip).
        model.tune_model_rlhf(
            prompt_data=None, preference_data=pairs, model_display_name="sdk-roles"
        )
    assert refused.value.status == 422
    assert refused.value.details["field"] == "datasets.prompts"


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_takes_its_required_roles_and_refuses_anything_else(method):
    spec = METHODS[method]
    required = [r.name for r in spec.dataset_roles if r.required]
    check_dataset_roles(method, required)
    check_dataset_roles(method, [r.name for r in spec.dataset_roles])
    with pytest.raises(DatasetRoleError) as refused:
        check_dataset_roles(method, [*required, "nope"])
    assert refused.value.problems[0][0] == "nope"
    assert set(refused.value.allowed) >= {r.name for r in spec.dataset_roles}


def test_a_dataset_keeps_the_name_it_was_uploaded_under(http, ids):
    """Display only (never a path): View code's CLI tab names the job's files by it; the
    dataset said upload.jsonl, the server's temporary name, once the upload had answered."""
    assert http.get(f"/v1/datasets/{ids['pairs']}").json()["filename"] == "pairs.jsonl"
    listed = {d["id"]: d["filename"] for d in http.get("/v1/datasets").json()["datasets"]}
    assert listed[ids["rows"]] == "rows.jsonl"
