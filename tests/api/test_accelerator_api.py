"""Asking for an accelerator the machine lacks fails at submit, on every face, naming the field:
REST answers 422 with ``config.accelerator`` / ``config.devices``, the CLI exits with the option's
name; nothing is queued. What a job asked for is in its stored spec."""

import pytest
from support import color_rows, write_jsonl
from typer.testing import CliRunner

from tunelab.models import device as device_module


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine, whatever CI runs on: no CUDA device."""
    monkeypatch.setattr(device_module, "cuda_device_count", lambda: 0)


def test_rest_refuses_cuda_without_it_and_keeps_what_a_job_asked(
    http, tiny_base, tmp_path, no_cuda
):
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    dataset = http.post("/v1/datasets", files={"file": ("t.jsonl", train.read_bytes())}).json()
    body = {"tuned_model_display_name": "m", "train_dataset": dataset["id"]}
    for config, field in (
        ({"accelerator": "cuda"}, "config.accelerator"),
        ({"devices": "0,1"}, "config.devices"),  # auto, but devices name GPUs
    ):
        answer = http.post(
            "/v1/tuningJobs", json={**body, "config": {"base_model": tiny_base, **config}}
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["details"]["field"] == field
        assert "CUDA" in error["message"] and "auto or cpu" in error["message"]
    answer = http.post(
        "/v1/tuningJobs", json={**body, "config": {"base_model": tiny_base, "accelerator": "gpu"}}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["details"]["errors"][0]["field"] == "config.accelerator"
    assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []

    created = http.post(
        "/v1/tuningJobs", json={**body, "config": {"base_model": tiny_base, "accelerator": "cpu"}}
    )
    assert created.status_code == 201, created.text
    job = http.get(f"/v1/tuningJobs/{created.json()['id']}").json()
    assert (job["config"]["accelerator"], job["config"]["devices"]) == ("cpu", None)


def test_cli_refuses_cuda_without_it(tmp_path, no_cuda, tiny_model_dir):
    from tunelab.cli import app

    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    common = ["tune", "sft", "--train", str(train), "--name", "m", "--base", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*common, "--accelerator", "cuda", "--detach"])
    assert result.exit_code == 1, result.output
    assert "--accelerator: accelerator 'cuda'" in result.output
    result = CliRunner().invoke(app, [*common, "--devices", "1,", "--detach"])
    assert result.exit_code == 1 and "--devices:" in result.output, result.output
    result = CliRunner().invoke(app, [*common, "--accelerator", "cpu", "--devices", "1"])
    assert result.exit_code == 1 and "devices names CUDA devices" in result.output, result.output
