"""Routes the Studio's form and dataset cards read: the tuning methods with their config
schemas (defaults written once, on the config), the dataset preview through the chat template,
and validation of a held-out set without training-set size advice."""

import json

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
        {"role": "train", "required": True, "description": "Rows."},
        {"role": "extra", "required": False, "description": "More rows."},
    ]
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
