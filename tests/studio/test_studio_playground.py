"""The playground for comparing (issue 19, item 3) in real chromium at 1280 and 390 px: two sides
with their own model, version and parameters, a multi-turn chat whose history each side sends
again, token counts and latency per answer, and View code per side."""

# ruff: noqa: F811  (pytest fixtures imported from the other Studio tests, then requested by name)
import json
import sys

import httpx
import pytest
from support import write_jsonl
from test_studio_browser import browser, db_url, log_in, rows, run_snippet, studio  # noqa: F401
from test_studio_rough_edges import LAPTOP, assert_fits, page, shot, submit, wait_done  # noqa: F401

pytestmark = pytest.mark.browser
# Each side has its own system instruction (a different one here, so a mix-up shows).
SYSTEMS = {"a": "Answer with one colour.", "b": "Answer in one word."}


def chat_bodies(page) -> list[dict]:
    return [json.loads(r.post_data) for r in page.chat_requests]


def answers(page, side: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#chat-{side} .turn.assistant .output-text", "ps => ps.map(p => p.textContent)"
    )


def test_two_sides_own_models_parameters_history_stats_and_code(studio, page, tmp_path):
    server, key, tiny = studio
    name = f"play-{page.width}"
    job = submit(
        server.url,
        key,
        "sft",
        {"train": write_jsonl(tmp_path / "t.jsonl", rows(16))},
        {"base_model": tiny, "train_steps": 4, "batch_size": 4},
        name,
    )
    done, _ = wait_done(server.url, key, job)
    assert done["state"] == "SUCCEEDED", done.get("error")

    page.chat_requests = []
    page.on(
        "request",
        lambda r: page.chat_requests.append(r) if r.url.endswith("/v1/chat/completions") else None,
    )
    log_in(page, server.url, key)
    # The job page's "try it" opens the playground on the version the job made.
    page.goto(f"{server.url}/#/jobs/{job}")
    page.click("#try-in-playground")
    page.wait_for_selector("#main[data-playground-ready=true]")
    assert page.input_value("#version-a") == "1"
    assert page.is_hidden("#side-b")
    page.check("#compare")
    assert page.is_visible("#side-b")
    # Side A: the tuned model at version 1; side B starts on its base, with its own parameters.
    assert page.input_value("#model-a") == name and page.input_value("#model-b") == tiny
    assert page.is_disabled("#version-b")
    settings = {
        "a": {"temperature": "0", "top_p": "0.9", "top_k": "5", "max_tokens": "6"},
        "b": {"temperature": "0", "top_p": "0.5", "top_k": "0", "max_tokens": "3"},
    }
    for side, values in settings.items():
        for param, value in values.items():
            page.fill(f"#param-{side}-{param}", value)
    for side, instruction in SYSTEMS.items():
        page.fill(f"#system-{side}", instruction)
    page.fill("#prompt", "item 3: the yellow one")
    page.click("#send")
    for side in ("a", "b"):
        page.wait_for_selector(f"#chat-{side} .turn.assistant[data-done=true]", timeout=300_000)
    assert not page.query_selector("#sides .alert.bad"), page.text_content("#sides")

    # Each side sent its own model and parameters, asked for the usage chunk, and shows its own
    # answer: the same text the server gives that side's request when not streaming (greedy).
    first = {b["model"]: b for b in chat_bodies(page)}
    assert set(first) == {f"{name}@1", tiny}
    expect = {"a": f"{name}@1", "b": tiny}
    for side, model in expect.items():
        body = first[model]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == int(settings[side]["max_tokens"])
        assert body["top_p"] == float(settings[side]["top_p"])
        assert body["top_k"] == int(settings[side]["top_k"])
        assert body["messages"] == [
            {"role": "system", "content": SYSTEMS[side]},
            {"role": "user", "content": "item 3: the yellow one"},
        ]
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=plain,
            timeout=120,
        )
        assert answers(page, side) == [r.json()["choices"][0]["message"]["content"]], side
        # Token counts (the stream's usage chunk) and latency on the answer.
        turn = page.locator(f"#chat-{side} .turn.assistant").first
        usage = r.json()["usage"]
        assert int(turn.get_attribute("data-prompt-tokens")) == usage["prompt_tokens"]
        assert int(turn.get_attribute("data-completion-tokens")) == usage["completion_tokens"]
        assert usage["completion_tokens"] <= int(settings[side]["max_tokens"])
        ttft, total = (int(turn.get_attribute(f"data-{k}-ms")) for k in ("first-token", "total"))
        assert 0 <= ttft <= total
        stats = turn.locator(".stats").inner_text()
        assert f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion" in stats
        assert "first token" in stats and "total" in stats

    # A second turn: each side sends its own history (its own earlier answer) again.
    a1, b1 = answers(page, "a")[0], answers(page, "b")[0]
    page.chat_requests.clear()
    page.fill("#prompt", "and the next one?")
    page.click("#send")
    for side in ("a", "b"):
        page.wait_for_selector(
            f"#chat-{side} .turn.assistant:nth-of-type(4)[data-done=true]", timeout=300_000
        )
    second = {b["model"]: b for b in chat_bodies(page)}
    for model, earlier, side in ((f"{name}@1", a1, "a"), (tiny, b1, "b")):
        assert second[model]["messages"] == [
            {"role": "system", "content": SYSTEMS[side]},
            {"role": "user", "content": "item 3: the yellow one"},
            {"role": "assistant", "content": earlier},
            {"role": "user", "content": "and the next one?"},
        ], model
    assert len(answers(page, "a")) == 2 and len(answers(page, "b")) == 2

    # View code per side: that side's model, parameters and conversation.
    for side in ("a", "b"):
        page.click(f"#view-code-{side}")
        page.wait_for_selector(f"#snippet-{side}-curl", state="attached")
        shown = json.loads(page.get_attribute(f"#code-{side}", "data-request"))
        sent = second[expect[side]]
        assert shown == {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
        curl = page.text_content(f"#snippet-{side}-curl")
        assert f'"model": "{expect[side]}"' in curl
        assert f'"max_tokens": {settings[side]["max_tokens"]}' in curl
        python = page.text_content(f"#snippet-{side}-python")
        assert f"max_output_tokens={settings[side]['max_tokens']}" in python
        assert "message_history=[" in python
    assert_fits(page)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar lands mid-page
    shot(page, "playground-compare")

    if page.width == LAPTOP:  # the code runs as shown (once: the widths show the same code)
        last = answers(page, "a")[1]
        out = run_snippet(["bash", "-c", page.text_content("#snippet-a-curl")], key)
        assert json.loads(out)["choices"][0]["message"]["content"] == last
        for snippet in ("python", "openai"):
            code = page.text_content(f"#snippet-a-{snippet}")
            assert run_snippet([sys.executable, "-c", code], key) == last + "\n", snippet

    # New chat forgets both conversations.
    page.click("#new-chat")
    assert page.locator("#sides .turn").count() == 0
    assert page.problems == []


def test_a_failing_side_shows_its_error_and_keeps_it_out_of_the_history(studio, page, tmp_path):
    """One side's model is refused (404): that side shows the error, the other side answers,
    and the refused turn is not sent again with the next prompt."""
    server, key, tiny = studio
    page.chat_requests = []
    page.on(
        "request",
        lambda r: page.chat_requests.append(r) if r.url.endswith("/v1/chat/completions") else None,
    )
    # A base model by path is listed once the server has loaded it: ask it once over REST.
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": tiny, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        timeout=120,
    )
    r.raise_for_status()
    log_in(page, server.url, key)
    page.goto(f"{server.url}/#/playground")
    page.wait_for_selector("#main[data-playground-ready=true]")
    page.check("#compare")
    page.select_option("#model-a", tiny)
    # A model that went away after the page listed it (deleted meanwhile).
    page.eval_on_selector(
        "#model-b",
        "s => { s.append(new Option('gone-model', 'gone-model')); s.value = 'gone-model'; }",
    )
    for side in ("a", "b"):
        page.fill(f"#param-{side}-max_tokens", "3")
    page.fill("#prompt", "hello")
    page.click("#send")
    for side in ("a", "b"):
        page.wait_for_selector(f"#chat-{side} .turn.assistant[data-done=true]", timeout=300_000)
    assert "gone-model" in page.text_content("#chat-b .turn.assistant .alert.bad")
    assert page.locator("#chat-a .alert.bad").count() == 0
    assert page.get_attribute("#chat-a .turn.assistant", "data-completion-tokens")
    # the 404 (and chromium's console line about it) is the point of this test
    assert all("404" in p for p in page.problems), page.problems
    page.problems.clear()

    page.chat_requests.clear()
    page.select_option("#model-b", tiny)
    page.fill("#prompt", "again")
    page.click("#send")
    page.wait_for_selector("#chat-b .turn.assistant:nth-of-type(4)[data-done=true]")
    page.wait_for_selector("#chat-a .turn.assistant:nth-of-type(4)[data-done=true]")
    sent = {json.dumps(json.loads(r.post_data)["messages"]) for r in page.chat_requests}
    by_turns = sorted(len(json.loads(m)) for m in sent)
    assert by_turns == [1, 3], sent  # B: just the new prompt; A: its answered turn and the new one
    assert page.problems == []


def test_version_picker_offers_versions_and_aliases_and_serves_only_deployed_ones(
    studio, services, page, tmp_path
):
    """The picker lists the default, the user's aliases and every version, each saying whether
    (and with what traffic share) it is deployed; undeployed ones cannot be picked; a picked
    alias is what the request names, with that side's own system instruction."""
    from tunelab.registry.models import adapter_artifact, get_version, register_version

    server, key, tiny = studio
    auth = {"Authorization": f"Bearer {key}"}
    name = f"picker-{page.width}"
    job = submit(
        server.url,
        key,
        "sft",
        {"train": write_jsonl(tmp_path / "t.jsonl", rows(16))},
        {"base_model": tiny, "train_steps": 4, "batch_size": 4},
        name,
    )
    done, _ = wait_done(server.url, key, job)
    assert done["state"] == "SUCCEEDED", done.get("error")
    v1 = get_version(services.db, f"{name}@1")
    artifact = adapter_artifact(services.db, v1)
    register_version(  # v2 over the same adapter files, registered only (not deployed)
        services.db,
        name=name,
        method="sft",
        base_model=v1.base_model,
        adapter_uri=artifact.uri,
        adapter_sha256=artifact.sha256,
        adapter_size=artifact.size_bytes,
        config=v1.config,
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )
    for alias, version in (("prod", 1), ("candidate", 2)):
        r = httpx.put(
            f"{server.url}/v1/tunedModels/{name}/aliases/{alias}",
            headers=auth,
            json={"version": version},
        )
        assert r.status_code == 200, r.text

    page.chat_requests = []
    page.on(
        "request",
        lambda r: page.chat_requests.append(r) if r.url.endswith("/v1/chat/completions") else None,
    )
    log_in(page, server.url, key)
    page.goto(f"{server.url}/#/playground?model={name}@prod")
    page.wait_for_selector("#main[data-playground-ready=true]")
    options = page.eval_on_selector_all(
        "#version-a option",
        "os => os.map(o => [o.value, o.textContent, o.disabled])",
    )
    assert options == [
        ["", "default (v1) · 100% traffic", False],
        ["candidate", "candidate (v2) · not deployed", True],
        ["prod", "prod (v1) · 100% traffic", False],
        ["2", "v2 · not deployed", True],
        ["1", "v1 · 100% traffic", False],
    ]
    assert page.input_value("#version-a") == "prod"  # the link's alias is preselected

    page.check("#compare")
    page.select_option("#model-b", name)
    page.wait_for_function("() => document.querySelectorAll('#version-b option').length === 5")
    page.select_option("#version-b", "1")
    page.fill("#system-a", "Answer with one colour.")
    page.fill("#system-b", "Answer in one word.")
    for side in ("a", "b"):
        page.fill(f"#param-{side}-max_tokens", "3")
    page.fill("#prompt", "item 3: the")
    page.click("#send")
    for side in ("a", "b"):
        page.wait_for_selector(f"#chat-{side} .turn.assistant[data-done=true]", timeout=300_000)
    assert not page.query_selector("#sides .alert.bad"), page.text_content("#sides")
    sent = {b["model"]: b["messages"][0] for b in chat_bodies(page)}
    assert sent == {
        f"{name}@prod": {"role": "system", "content": "Answer with one colour."},
        f"{name}@1": {"role": "system", "content": "Answer in one word."},
    }
    # The View code of a side names what its picker says, with its own system instruction.
    page.click("#view-code-a")
    shown = json.loads(page.get_attribute("#code-a", "data-request"))
    assert shown["model"] == f"{name}@prod"
    assert shown["messages"][0] == {"role": "system", "content": "Answer with one colour."}

    # Deploy v2 with a tenth of the traffic: picking the model again offers it.
    r = httpx.post(
        f"{server.url}/v1/endpoints",
        headers=auth,
        json={"model": f"{name}@candidate", "traffic_percentage": 10},
    )
    assert r.status_code == 201, r.text
    page.select_option("#model-a", tiny)
    page.select_option("#model-a", name)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#version-a option')]"
        ".some(o => o.value === '2' && !o.disabled)"
    )
    assert page.text_content("#version-a option[value='2']") == "v2 · 10% traffic"
    assert page.text_content("#version-a option[value='1']") == "v1 · 90% traffic"
    assert_fits(page)
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "playground-versions")
    assert page.problems == []
