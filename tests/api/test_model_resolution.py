"""What a request may name as a model, through the real server with a key: a registered tuned
model, a deployed endpoint, or a base model the operator made servable. A folder, ``~``, a hub
id or a name with path characters is a 404 that shows no server path and loads nothing; engines
are keyed by the resolved base model, so two references to one base share one engine."""

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from support import LiveServer, color_rows, write_jsonl

from tunelab.api.app import create_app
from tunelab.serving.pool import InferencePool


@pytest.fixture
def server(services, api_key, tiny_base):
    pool = InferencePool(services)
    with LiveServer(create_app(services, inference=pool)) as live:
        with httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
        ) as client:
            yield client, pool
    pool.close()


def _assert_no_paths(text: str, *paths) -> None:
    for path in [Path.home(), *paths]:
        assert str(path) not in text, text
    assert "huggingface" not in text.lower() and "looked in" not in text, text


def test_request_strings_never_become_paths(server, tiny_model_dir, tmp_path):
    client, pool = server
    refused = [
        str(tiny_model_dir),  # a real, loadable model folder on the server's disk
        str(tiny_model_dir) + "/",
        "~",
        "~/.cache/tunelab/models/smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",  # a hub id: no download is tried
        "../tiny-llama",
        "tiny-llama/../tiny-llama",
        "tiny-llama@1",  # a base has no versions
        "no-such-model@latest",
        "smollm2-135m-instruct/",
    ]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for ref in refused:
        for path, body in (
            ("/v1/chat/completions", {"model": ref, **chat}),
            ("/v1/completions", {"model": ref, "prompt": "hi", "max_tokens": 2}),
            ("/v1/embeddings", {"model": ref, "input": "hi"}),
            (f"/v1/endpoints/{quote(ref, safe='')}:predict", {"instances": [{"prompt": "hi"}]}),
        ):
            answer = client.post(path, json=body)
            assert answer.status_code == 404, (path, ref, answer.text)
            # The answer may repeat the client's own string, nothing more of the disk.
            _assert_no_paths(answer.text.replace(ref, "<ref>"), tiny_model_dir, tmp_path)
    assert pool._engines == {}  # nothing was loaded for any of them
    names = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert names == {"smollm2-135m-instruct", "tiny-llama"}


def test_operator_base_is_served_and_one_engine_per_resolved_base(
    server, services, tiny_model_dir, tmp_path
):
    """A tuned model whose job named the folder (the operator's CLI may) and the base added by
    name resolve to the same folder: one engine, whichever is asked first."""
    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker

    client, pool = server
    job, _ = submit_job(
        services.db,
        services.artifacts,
        name="by-folder",
        datasets={"train": write_jsonl(tmp_path / "t.jsonl", color_rows(24))},
        config=SFTConfig(base_model=str(tiny_model_dir), train_steps=2),
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    for model in ("by-folder", "tiny-llama", "by-folder@1"):
        answer = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert answer.status_code == 200, answer.text
    assert len(pool._engines) == 1
    endpoint = client.get("/v1/endpoints").json()["endpoints"][0]["id"]
    predicted = client.post(
        f"/v1/endpoints/{endpoint}:predict", json={"instances": [{"prompt": "a"}]}
    )
    assert predicted.status_code == 200 and len(pool._engines) == 1
    names = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert names == {"smollm2-135m-instruct", "tiny-llama", "by-folder"}


def test_validation_report_and_job_configs_name_no_server_paths(
    http, tiny_base, tiny_model_dir, tmp_path
):
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    dataset = http.post("/v1/datasets", files={"file": ("t.jsonl", train.read_bytes())}).json()
    report = http.get(f"/v1/datasets/{dataset['id']}/validation", params={"base_model": tiny_base})
    assert report.status_code == 200 and report.json()["tokenizer"] == tiny_base
    _assert_no_paths(report.text, tiny_model_dir, tmp_path)
    for base in (str(tiny_model_dir), "~", "org/model"):
        refused = http.get(f"/v1/datasets/{dataset['id']}/validation", params={"base_model": base})
        assert refused.status_code == 404, refused.text
        _assert_no_paths(refused.text.replace(base, ""), tiny_model_dir, tmp_path)

    body = {"tuned_model_display_name": "m", "train_dataset": dataset["id"]}
    for config in (
        {"base_model": str(tiny_model_dir)},
        {"base_model": "~"},
        {"base_model": tiny_base, "init_adapter": str(tmp_path)},
    ):
        method = "dpo" if "init_adapter" in config else "sft"
        refused = http.post("/v1/tuningJobs", json={**body, "method": method, "config": config})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "model_not_found"
    assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "x@1",
        "../x",
        ".hidden",
        "with space",
        "smollm2-135m-instruct",
        "tiny-llama",
        "x" * 129,
    ],
)
def test_rest_refuses_tuned_model_names_outside_the_grammar(http, tiny_base, tmp_path, name):
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    dataset = http.post("/v1/datasets", files={"file": ("t.jsonl", train.read_bytes())}).json()
    answer = http.post(
        "/v1/tuningJobs",
        json={
            "tuned_model_display_name": name,
            "train_dataset": dataset["id"],
            "config": {"base_model": tiny_base},
        },
    )
    assert answer.status_code == 422, answer.text
    assert "tuned_model_display_name" in answer.text
    assert http.get("/v1/tuningJobs").json()["tuning_jobs"] == []


def test_sdk_reaches_the_same_name_check(live, api_key, tiny_base, tmp_path):
    import tunelab
    from tunelab import sft

    tunelab.init(url=live.url, api_key=api_key)
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(20))
    with pytest.raises(Exception, match="base model this server serves|not valid"):
        sft.train(
            source_model=tiny_base,
            train_dataset=str(train),
            tuned_model_display_name="smollm2-135m-instruct",
        )


def test_an_unexpected_error_shows_no_server_text(services, api_key):
    """A 500 says what kind of error happened; its text (which can hold paths) stays in the log."""
    secret = f"{Path.home()}/.tunelab/artifacts/jobs/x/adapter"

    class BrokenPool:
        def target(self, name):
            raise OSError(f"[Errno 2] No such file or directory: '{secret}'")

        def close(self):
            pass

    with LiveServer(create_app(services, inference=BrokenPool())) as live:
        answer = httpx.post(
            f"{live.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.status_code == 500 and "OSError" in answer.text
    assert secret not in answer.text and str(Path.home()) not in answer.text
