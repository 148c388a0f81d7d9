"""The job page's kept checkpoints in a real headless Chromium: listed with their metrics and
in-job evaluation, and "Deploy this checkpoint" promotes one to a version and deploys it. Uses
the browser, page and server fixtures of test_studio_browser."""

import time

import httpx
import pytest
from support import color_rows, write_jsonl
from test_studio_browser import browser, db_url, log_in, page, shoot, studio  # noqa: F401

pytestmark = pytest.mark.browser


def test_job_page_lists_checkpoints_and_deploys_one(studio, page, services, tmp_path):  # noqa: F811
    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job

    server, key, tiny = studio
    job, _ = submit_job(
        services.db,
        services.artifacts,
        name="ckpt-studio",
        datasets={
            "train": write_jsonl(tmp_path / "train.jsonl", color_rows(16)),
            "validation": write_jsonl(tmp_path / "val.jsonl", color_rows(4, offset=300)),
        },
        config=SFTConfig(
            base_model=tiny,
            train_steps=8,
            batch_size=8,
            eval_every_steps=4,
            checkpoint_every_steps=4,
            learning_rate_multiplier=10.0,
            early_stopping_patience=None,
        ),
    )
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
    deadline = time.monotonic() + 300
    while http.get(f"/v1/tuningJobs/{job.id}").json()["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline, http.get(f"/v1/tuningJobs/{job.id}").json()
        time.sleep(0.5)

    log_in(page, server.url, key)
    page.goto(f"{server.url}/#/jobs/{job.id}")
    page.wait_for_selector("#checkpoints tbody tr[data-step='8']", timeout=120_000)
    rows = page.locator("#checkpoints tbody tr")
    assert [rows.nth(i).get_attribute("data-step") for i in range(rows.count())] == ["4", "8"]
    listed = http.get(f"/v1/tuningJobs/{job.id}/checkpoints").json()["checkpoints"]
    early = page.locator("#checkpoints tr[data-step='4']")
    shown_loss = early.locator(".valid-loss").text_content()
    assert float(shown_loss) == pytest.approx(listed[0]["metrics"]["eval_loss"], rel=1e-3)
    assert early.locator(".eval-headline").text_content() != "—"  # evaluated in the job
    assert listed[0]["headline_metric"] == "rouge_l"  # the colour words: a generation task
    assert "Eval ROUGE-L" in page.locator("#checkpoints thead").text_content()
    assert early.locator(".checkpoint-model").text_content() == "ckpt-studio@checkpoint-4"
    shoot(page, "job-checkpoints")

    early.locator("button.deploy-checkpoint").click()
    page.wait_for_function(
        "document.querySelector(\"#checkpoints tr[data-step='4'] .checkpoint-status\")"
        ".textContent.includes('deployed as ckpt-studio@2')",
        timeout=120_000,
    )
    endpoints = http.get("/v1/endpoints").json()["endpoints"]
    assert "ckpt-studio@2" in {e["deployed_model"] for e in endpoints}
    version = http.get("/v1/tunedModels/ckpt-studio").json()["versions"][1]
    assert version["metrics"]["checkpoint"] == {
        "job_id": job.id,
        "step": 4,
        "of_version": 1,
        "evaluation": listed[0]["evaluation"],
    }
    assert not page.errors
