"""Routes the Studio's form and dataset cards read: the tuning methods with their config
schemas (defaults written once, on the config), the dataset preview through the chat template,
and validation of a held-out set without training-set size advice."""

import json

import pytest
from support import write_jsonl

from tunelab.jobs.methods import METHODS


def _upload(http, path):
    r = http.post("/v1/datasets", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201 or r.status_code == 200, r.text
    return r.json()["id"]


def test_tuning_methods_carry_each_config_schema_with_its_defaults(http):
    methods = {
        m["method"]: m["config_schema"]
        for m in http.get("/v1/tuningMethods").json()["tuning_methods"]
    }
    assert set(methods) == set(METHODS)
    dpo = methods["dpo"]["properties"]
    assert dpo["beta"]["default"] == METHODS["dpo"].config.model_fields["beta"].default
    assert dpo["batch_size"]["description"]
    assert methods["sft"]["properties"]["adapter_size"]["default"] == 8


def test_the_method_listing_and_the_job_body_come_from_the_method_table(http, monkeypatch):
    from typing import Literal

    from pydantic import Field

    from tunelab.configs import SFTConfig
    from tunelab.jobs.methods import DatasetRole, MethodSpec

    class Grown(SFTConfig):
        method: Literal["grown"] = "grown"
        workers: int = Field(1, ge=1, le=64, description="Training processes.")

    roles = (DatasetRole("train", "Rows.", required=True), DatasetRole("extra", "More rows."))
    monkeypatch.setitem(METHODS, "grown", MethodSpec(Grown, roles, "x", ()))
    listed = {m["method"]: m for m in http.get("/v1/tuningMethods").json()["tuning_methods"]}
    assert list(listed) == list(METHODS)
    assert listed["grown"]["config_schema"]["properties"]["workers"]["default"] == 1
    assert listed["grown"]["dataset_roles"] == [
        {"role": "train", "required": True, "description": "Rows.", "title": "Train", "kind": None},
        {
            "role": "extra",
            "required": False,
            "description": "More rows.",
            "title": "Extra",
            "kind": None,
        },
    ]
    assert listed["grown"]["aliases"] == {}
    assert listed["grown"]["title"] == "grown"  # no title in the table: its key
    assert listed["grown"]["description"].startswith("Supervised fine-tuning")  # the docstring's
    assert [r["role"] for r in listed["rlhf"]["dataset_roles"]] == ["preference", "prompts", "eval"]
    body = {"tuned_model_display_name": "m", "train_dataset": "ds-x", "method": "grown"}
    r = http.post("/v1/tuningJobs", json=body | {"config": {"workers": 0, "batch_size": 0}})
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["error"]["details"]["errors"]}
    assert fields == {"config.workers", "config.batch_size"}
    r = http.post("/v1/tuningJobs", json=body | {"method": "gone"})
    assert r.status_code == 422 and "known: dpo, embedding, grown, rft, rlhf, sft" in r.text


def test_preview_renders_the_template_and_marks_the_trained_span(http, tmp_path, tiny_base):
    rows = [
        {"input_text": "Colour of the sky?", "output_text": "blue"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"input_text": "x"}\n')
    ds = _upload(http, path)
    r = http.get(f"/v1/datasets/{ds}/preview", params={"base_model": tiny_base})
    assert r.status_code == 200, r.text
    first, second, bad = r.json()["rows"]
    start, end = first["trained_spans"][0]
    assert first["text"][start:end].startswith("blue")  # the answer, and its end-of-turn marker
    assert "Colour of the sky?" in first["text"][:start]  # the prompt is not trained
    assert (
        "Be brief." in second["text"]
        and second["text"][slice(*second["trained_spans"][0])][0] == "4"
    )
    assert bad["line"] == 3 and bad["problems"] and "text" not in bad
    r = http.get(f"/v1/datasets/{ds}/preview", params={"base_model": "no-such-model-xyz"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_held_out_set_gets_no_training_size_advice(http, tmp_path, tiny_base):
    ds = _upload(
        http, write_jsonl(tmp_path / "v.jsonl", [{"input_text": "a", "output_text": "b"}] * 5)
    )
    params = {"base_model": tiny_base}
    as_train = http.get(f"/v1/datasets/{ds}/validation", params=params).json()
    assert any("Vertex requires at least 16" in w for w in as_train["warnings"])
    held_out = http.get(
        f"/v1/datasets/{ds}/validation", params=params | {"purpose": "validation"}
    ).json()
    assert not any("16" in w or "recommended" in w for w in held_out["warnings"])
    bad = http.get(f"/v1/datasets/{ds}/validation", params=params | {"purpose": "other"})
    assert bad.status_code == 422


def test_the_listing_names_each_role_alias_a_job_body_may_use(http):
    """DPO takes its pairs as ``train`` too (REST's train_dataset, OpenAI's training_file): the
    listing says so, and the alias it lists is accepted where the role is."""
    listed = {m["method"]: m for m in http.get("/v1/tuningMethods").json()["tuning_methods"]}
    assert listed["dpo"]["aliases"] == {"train": "preference"}
    assert all(listed[m]["aliases"] == dict(METHODS[m].role_aliases) for m in METHODS)
    for method in listed.values():
        roles = {r["role"] for r in method["dataset_roles"]}
        assert set(method["aliases"].values()) <= roles, method["method"]
        assert not set(method["aliases"]) & roles, method["method"]
    from tunelab.jobs.methods import check_dataset_roles

    for alias in listed["dpo"]["aliases"]:
        check_dataset_roles("dpo", [alias])  # a listed alias stands for the required role


def test_the_studio_form_reads_titles_kinds_and_layout_from_the_listing(http):
    """What the create form is built from: each method's title and description, each dataset
    role's title and the kind its file is checked as, and each config's labels and layout."""
    listed = {m["method"]: m for m in http.get("/v1/tuningMethods").json()["tuning_methods"]}
    assert listed["rlhf"]["title"] == "RLHF" and "reward model" in listed["rlhf"]["description"]
    roles = {r["role"]: r for r in listed["dpo"]["dataset_roles"]}
    assert roles["preference"] | {"description": ""} == {
        "role": "preference",
        "required": True,
        "description": "",
        "title": "Preference pairs",
        "kind": "preference",
    }
    kinds = {r["role"]: r["kind"] for r in listed["embedding"]["dataset_roles"]}
    assert kinds == {
        "corpus": "corpus",
        "queries": "queries",
        "train_labels": "labels",
        "test_labels": "labels",
        "validation_labels": "labels",
    }
    sft = listed["sft"]["config_schema"]
    assert sft["properties"]["adapter_size"]["title"] == "Adapter size (LoRA rank)"
    assert sft["properties"]["learning_rate_multiplier"]["title"] == "Learning rate multiplier"
    assert listed["rlhf"]["config_schema"]["properties"]["kl_coeff"]["title"] == "KL coefficient"
    assert sft["x-form"]["basic"][:2] == ["epochs", "train_steps"]
    assert sft["x-form"]["advanced"][-3:] == ["accelerator", "devices", "processes"]
    assert sft["properties"]["epochs"]["x-when-empty"] == 3


def test_every_config_field_is_in_its_form_layout_once(http):
    """The layout lists each field but method and base_model exactly once, so a new field shows
    in the form (among the advanced ones) the moment it is on the config."""
    for m in http.get("/v1/tuningMethods").json()["tuning_methods"]:
        schema = m["config_schema"]
        layout = schema["x-form"]["basic"] + schema["x-form"]["advanced"]
        assert sorted(layout) == sorted(set(schema["properties"]) - {"method", "base_model"})
        assert all(schema["properties"][f].get("description") for f in layout), m["method"]


def test_a_layout_naming_no_field_is_an_error():
    from typing import Literal

    from pydantic import BaseModel, ConfigDict

    from tunelab.configs.form import form_layout

    class Typo(BaseModel):
        model_config = ConfigDict(**form_layout("epoch"))
        method: Literal["typo"] = "typo"
        epochs: int = 1

    with pytest.raises(ValueError, match="Typo: form_layout names no field epoch"):
        Typo.model_json_schema()
