"""The create form is built from the method table and the config schemas, in real chromium:
every field of every method's config is in the form with the config's default, label and help
(a field written only on a config class, or a method only in the table, shows with no change to
the Studio), the basic fields first and the others folded; bad values are caught before
submitting and a value the server refuses is marked at its field.

Uses the browser, page and server fixtures of test_studio_browser."""

# ruff: noqa: F811  (pytest fixtures imported from test_studio_browser, then requested by name)
import json
from typing import Literal

import pytest
from pydantic import ConfigDict, Field
from pydantic_core import PydanticUndefined
from support import write_jsonl
from test_studio_browser import browser, db_url, log_in, page, rows, shoot, studio  # noqa: F401

from tunelab.configs.form import form_layout
from tunelab.jobs.methods import METHODS

pytestmark = pytest.mark.browser


def shown(value) -> str:
    """A default as the form's input holds it (what a user sees there)."""
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2)
    return str(value)


def open_method(page, method: str) -> None:
    page.wait_for_selector(f"#method option[value={method}]", state="attached")
    page.select_option("#method", method)
    page.wait_for_selector("#hyperparameters .param")


def assert_form_matches_config(page, method: str) -> None:
    """Every field of the method's config (but ``method`` and ``base_model``, asked for above
    the parameters) has an input holding the config's default, labelled with the schema's
    title and helped by its description; the layout's basic fields are the visible ones."""
    config = METHODS[method].config
    schema = config.model_json_schema()
    layout = schema["x-form"]
    fields = set(config.model_fields) - {"method", "base_model"}
    assert set(layout["basic"]) | set(layout["advanced"]) == fields, method
    in_form = page.eval_on_selector_all(
        "#hyperparameters .param", "ps => ps.map(p => p.dataset.field)"
    )
    assert in_form == layout["basic"] + layout["advanced"], method  # in the config's order
    for name in fields:
        selector = f"#param-{name}"
        default = config.model_fields[name].default
        if isinstance(default, bool):
            assert page.is_checked(selector) == default, (method, name)
        else:
            assert page.input_value(selector) == shown(default), (method, name)
        prop = schema["properties"][name]
        assert page.text_content(f"label[for=param-{name}]") == prop["title"], (method, name)
        assert page.text_content(f"{selector} + small") == prop["description"], (method, name)
        assert page.is_visible(selector) == (name in layout["basic"]), (method, name)


def test_every_config_field_is_in_the_form_with_its_default(studio, page):
    server, key, _ = studio
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#method option[value=sft]", state="attached")
    listed = page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")
    assert listed == list(METHODS)
    for method in METHODS:
        open_method(page, method)
        assert_form_matches_config(page, method)
        roles = [r.name for r in METHODS[method].dataset_roles]
        cards = page.eval_on_selector_all("#datasets fieldset", "fs => fs.map(f => f.dataset.role)")
        assert cards == roles, method
        page.click("#advanced-params summary")  # the folded fields unfold
        advanced = METHODS[method].config.model_json_schema()["x-form"]["advanced"]
        assert all(page.is_visible(f"#param-{name}") for name in advanced), method
        shoot(page, f"create-{method}-all-fields")
    assert page.errors == []


def test_a_method_and_a_field_only_in_the_table_and_its_config_show_in_the_form(
    studio, page, monkeypatch
):
    """The form names no method or field: a config subclass with a field of its own, added to
    the method table, is a method of the form with that field, its default and its help, its
    dataset cards, and its layout's basic fields first."""
    from tunelab.configs import SFTConfig
    from tunelab.jobs.methods import DatasetRole, MethodSpec

    class ProbeConfig(SFTConfig):
        """Probe tuning: a method the Studio has never heard of."""

        model_config = ConfigDict(
            extra="forbid", frozen=True, **form_layout("probe_depth", "probe_mode", "epochs")
        )

        method: Literal["probe"] = "probe"
        probe_depth: int = Field(7, ge=1, le=9, description="How deep the probe goes.")
        probe_mode: Literal["near", "far"] = Field("far", description="Where it looks.")
        probe_notes: str | None = Field(None, max_length=20, description="Said to the probe.")

    roles = (
        DatasetRole("train", "Rows.", required=True, kind="supervised"),
        DatasetRole("probes", "Probe rows, read only by the job."),
    )
    monkeypatch.setitem(METHODS, "probe", MethodSpec(ProbeConfig, roles, "x", (), title="Probe"))
    server, key, tiny = studio
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    open_method(page, "probe")
    assert page.text_content("#method option[value=probe]") == "Probe"
    assert "Probe tuning: a method the Studio has never heard of." in page.text_content(
        "#method-note"
    )
    assert_form_matches_config(page, "probe")
    assert page.input_value("#param-probe_depth") == "7"
    assert page.get_attribute("#param-probe_depth", "max") == "9"
    modes = page.eval_on_selector_all("#param-probe_mode option", "os => os.map(o => o.value)")
    assert modes == ["near", "far"]
    assert page.is_hidden("#param-probe_notes")  # not in the layout's basic fields: folded
    assert "Probes (optional)" in page.text_content("#datasets fieldset[data-role=probes]")
    # The form's own check, from the schema's bounds, before anything is sent.
    page.fill("#display-name", "probe-model")
    page.fill("#base-model", tiny)
    page.fill("#param-probe_depth", "12")
    page.wait_for_function(
        "document.querySelector('#submit-reason').textContent.includes('probe depth')"
    )
    assert "at most 9" in page.text_content("#submit-reason")
    assert page.get_attribute("#param-probe_depth", "aria-invalid") == "true"
    page.fill("#param-probe_depth", "3")
    page.wait_for_function(
        "!document.querySelector('#submit-reason').textContent.includes('probe depth')"
    )
    assert page.get_attribute("#param-probe_depth", "aria-invalid") == "false"
    assert page.errors == []


def test_a_value_the_server_refuses_is_marked_at_its_field(studio, page, tmp_path):
    """Bounds the form checks itself are not all there is (a devices spelling, fields that
    conflict): the server's 422 names the field, and the form unfolds and marks it."""
    server, key, tiny = studio
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    open_method(page, "sft")
    page.fill("#display-name", "refused")
    page.fill("#base-model", tiny)
    page.set_input_files("#train-file", str(write_jsonl(tmp_path / "t.jsonl", rows(20))))
    page.wait_for_selector("#train-report .report.ok")
    page.click("#advanced-params summary")
    page.select_option("#param-accelerator", "cuda")
    page.fill("#param-devices", "zero,one")
    page.click("#advanced-params summary")  # folded again: the error unfolds it
    page.wait_for_selector("#submit-job:not([disabled])")
    page.click("#submit-job")
    page.wait_for_selector("#form-error .alert.bad")
    assert "config.devices" in page.text_content("#form-error")
    assert page.get_attribute("#param-devices", "aria-invalid") == "true"
    assert page.is_visible("#param-devices")
    assert page.is_disabled("#submit-job")  # until the field is changed
    page.fill("#param-devices", "")
    page.select_option("#param-accelerator", "cpu")
    page.wait_for_selector("#submit-job:not([disabled])")
    assert page.get_attribute("#param-devices", "aria-invalid") == "false"
    assert "/#/create" in page.url  # nothing was created
