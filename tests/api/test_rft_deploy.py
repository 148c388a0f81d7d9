"""RFT jobs have the ``deploy`` setting every method's config has (it was missing: an RFT body
with ``deploy`` was refused and every RFT version went through ``if_better``), on every face
(REST body, SDK argument, ``tune rft --deploy``, the Studio's form from the schema), and
``if_better`` compares RFT versions by the held-out prompts' mean reward, only when they were
graded the same way."""

import pytest
from support import write_jsonl

from tunelab.configs.rft import RFTConfig
from tunelab.jobs.methods import METHODS

GRADER = {"type": "numeric", "reference": "{{item.answer}}"}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_s_config_has_the_deploy_setting(method):
    schema = METHODS[method].config.model_json_schema()
    assert schema["properties"]["deploy"]["enum"] == ["if_better", "always", "never"]
    assert schema["properties"]["deploy"]["default"] == "if_better"
    assert "deploy" in schema["x-form"]["advanced"]  # the Studio's form shows it


@pytest.fixture
def prompts(http, tmp_path):
    rows = [{"input_text": f"Number {i}?", "answer": i} for i in range(8)]
    ids = {}
    for role, chosen in (("train", rows), ("validation", rows[:4])):
        path = write_jsonl(tmp_path / f"{role}.jsonl", chosen)
        ids[role] = http.post("/v1/datasets", files={"file": (path.name, path.read_bytes())})
        ids[role] = ids[role].json()["id"]
    return ids


def test_rft_jobs_deploy_as_their_setting_says(http, services, tiny_base, prompts):
    from tunelab.jobs.worker import Worker

    def tune(grader=GRADER, **config):
        body = {
            "method": "rft",
            "tuned_model_display_name": "rft-model",
            "datasets": prompts,
            "config": {
                "base_model": tiny_base,
                "grader": grader,
                "train_steps": 1,
                "prompts_per_step": 2,
                "samples_per_prompt": 2,
                "target_sequence_length": 4,
                "grade_cut_answers": True,
                **config,
            },
        }
        created = http.post("/v1/tuningJobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert Worker(services.db, services.artifacts).run_job(job_id).state == "SUCCEEDED"
        done = http.get(f"/v1/tuningJobs/{job_id}").json()
        return done, next(s for s in done["pipeline"] if s["name"] == "deploy")["outputs"]

    done, out = tune(deploy="never")
    assert done["config"]["deploy"] == "never"
    assert not out["deployed"] and "never" in out["reason"] and done["endpoint"] is None
    _, out = tune()  # if_better, nothing deployed yet
    assert out["deployed"] and "nothing was deployed" in out["reason"]
    # The same held-out prompts, graded the same way: compared on mean reward.
    _, out = tune()
    assert "mean reward" in out["reason"] and "of rft-model@2" in out["reason"], out
    # Another grader is another test: not compared, registered only.
    _, out = tune(
        grader={"type": "string_check", "reference": "{{item.answer}}", "operation": "eq"}
    )
    assert not out["deployed"] and "not evaluated on the same held-out data" in out["reason"]
    _, out = tune(deploy="always")
    assert out["deployed"]
    versions = http.get("/v1/tunedModels/rft-model").json()["versions"]
    assert {v["version"]: v["aliases"] for v in versions}[5] == ["default"]

    bad = http.post(
        "/v1/tuningJobs",
        json={
            "method": "rft",
            "tuned_model_display_name": "rft-model",
            "datasets": prompts,
            "config": {"base_model": tiny_base, "grader": GRADER, "deploy": "sometimes"},
        },
    )
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["error"]["details"]["errors"]] == ["config.deploy"]


def test_the_sdk_and_the_cli_take_rft_s_deploy(live, api_key, tiny_base, tmp_path):
    import tunelab
    from tunelab import TextGenerationModel

    tunelab.init(url=live.url, api_key=api_key)
    data = write_jsonl(tmp_path / "p.jsonl", [{"input_text": "1?", "answer": 1}])
    job = TextGenerationModel.from_pretrained(tiny_base).tune_model_rft(
        training_data=data, grader=GRADER, model_display_name="sdk-rft", deploy="never"
    )
    assert job.refresh()._resource["config"]["deploy"] == "never"
    assert RFTConfig(grader=GRADER).deploy == "if_better"

    from typer.main import get_command

    from tunelab.cli import app

    rft = get_command(app).commands["tune"].commands["rft"]
    deploy = next(p for p in rft.params if "--deploy" in p.opts)
    assert deploy.default == "if_better" and "if_better" in deploy.help
