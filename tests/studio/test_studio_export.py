"""The Studio's Export button in a real headless Chromium: a model version exported as a PEFT
adapter and as GGUF is downloaded by the browser, and the archive holds what PEFT and llama.cpp
need. Uses the browser, page and server fixtures of test_studio_browser."""

import io
import json
import tarfile

import pytest
import torch
from test_studio_browser import browser, db_url, log_in, page, shoot, studio  # noqa: F401

pytestmark = pytest.mark.browser


def imported_model(services, base_dir, base, folder, name):
    """A tuned model in the registry without a training run: a PEFT adapter made on the base
    model's folder, imported onto the base model ``base`` named as the operator added it."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_causal_lm
    from tunelab.registry.importing import import_adapter

    torch.manual_seed(5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(load_causal_lm(base_dir), lora)
    model.save_pretrained(folder, safe_serialization=True)
    return import_adapter(services, folder, name=name, base=base)


def export_via_button(page, ref: str, choice: str, tmp_path):  # noqa: F811
    version = page.locator(f'[data-version="{ref}"]')
    version.locator("select.export-format").select_option(choice)
    with page.expect_download(timeout=120_000) as pending:
        version.locator("button.export").click()
    download = pending.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    page.wait_for_function(
        f"document.querySelector('[data-version=\"{ref}\"] .export-status').textContent.includes('sha256')"
    )
    return download.suggested_filename, tarfile.open(fileobj=io.BytesIO(path.read_bytes()))


def test_export_button_downloads_peft_and_gguf_archives(
    studio,  # noqa: F811
    page,  # noqa: F811
    services,
    tiny_model_dir,
    tmp_path,
):
    server, key, tiny = studio  # tiny: the base's name (add_base), never its folder
    imported_model(services, tiny_model_dir, tiny, tmp_path / "adapter", "exportable")
    log_in(page, server.url, key)
    page.goto(server.url + "/#/models")
    page.wait_for_selector('[data-version="exportable@1"] button.export')
    parent = page.locator('[data-version="exportable@1"] [data-testid="lineage-parent"]')
    assert "imported" in parent.text_content()
    shoot(page, "models-export")

    name, tar = export_via_button(page, "exportable@1", "peft", tmp_path)
    assert name == "exportable-v1-peft.tar"
    names = set(tar.getnames())
    assert "exportable-v1-peft/adapter_model.safetensors" in names
    config = json.load(tar.extractfile("exportable-v1-peft/adapter_config.json"))
    assert config["target_modules"] and config["r"] == 4

    name, tar = export_via_button(page, "exportable@1", "gguf:q8_0", tmp_path)
    assert name == "exportable-v1-gguf-q8_0.tar"
    names = set(tar.getnames())
    assert {
        "exportable-v1-gguf-q8_0/exportable-v1-q8_0.gguf",
        "exportable-v1-gguf-q8_0/Modelfile",
    } <= names
    modelfile = tar.extractfile("exportable-v1-gguf-q8_0/Modelfile").read().decode()
    assert modelfile.startswith("FROM ./exportable-v1-q8_0.gguf")
    status = page.locator('[data-version="exportable@1"] .export-status').text_content()
    assert name in status
    assert not page.errors
