"""The Studio's models page says for each version whether vLLM can serve it, and why not (the
verdict stored at registration). Uses the browser, page and server fixtures of
test_studio_browser."""

import json

import pytest
from test_studio_browser import browser, db_url, log_in, page, studio  # noqa: F401

pytestmark = pytest.mark.browser


def registered(services, tmp_path, name, **config):
    """A version whose adapter, as the vLLM check reads it, has ``config``."""
    from tunelab.registry.models import register_version

    folder = tmp_path / name
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"} | config
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return register_version(
        services.db,
        name=name,
        method="sft",
        base_model="tiny-llama",
        adapter_uri=str(folder),
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
        store=services.artifacts,
    )


def test_the_models_page_shows_the_vllm_verdict_of_each_version(
    studio,  # noqa: F811
    page,  # noqa: F811
    services,
    tmp_path,
):
    server, key, _ = studio
    registered(services, tmp_path, "small-rank", r=4)
    registered(services, tmp_path, "dora-model", use_dora=True, bias="all")
    log_in(page, server.url, key)
    page.goto(server.url + "/#/models")
    verdict = "[data-version='{}'] [data-testid=vllm-verdict]"
    page.wait_for_selector(verdict.format("dora-model@1"))
    assert page.text_content(verdict.format("small-rank@1")) == "servable (--max-lora-rank ≥ 8)"
    assert page.text_content(verdict.format("dora-model@1")) == (
        "not servable: DoRA adapters (use_dora) are not supported by vLLM; "
        "bias='all': vLLM serves LoRA adapters without bias terms"
    )
    assert page.errors == []
