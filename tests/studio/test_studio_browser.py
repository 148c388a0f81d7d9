"""The Studio in a real headless Chromium (Debian's ``chromium``, which scripts/install.sh
installs), driven by Playwright against the real server on loopback: a tiny base model, a worker
thread running the jobs the wizard submits, the inference pool answering the playground.

Screenshots of every page at laptop (1280 px) and wide (1920 px) widths go to
``test-artifacts/studio/``. Without /usr/bin/chromium (or Playwright) the tests skip, unless
``TUNELAB_REQUIRE_BROWSER=1`` (CI), where they fail instead.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import LiveServer, preference_rows, write_jsonl

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "studio"
WIDTHS = (1280, 1920)
LABELS = ["red", "green", "blue", "yellow"]


def _missing_browser(reason: str):
    if os.environ.get("TUNELAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TUNELAB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(f"{reason}: install it with scripts/install.sh (Debian's chromium package)")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _missing_browser(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_browser("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def db_url(tmp_path):
    """The Studio exercises the browser and HTTP, not the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def studio(services, tiny_model_dir):
    """The real app (API + Studio) with an inference pool and a worker thread, on loopback."""
    from tunelab.api.app import create_app
    from tunelab.auth import create_key
    from tunelab.jobs.worker import Worker
    from tunelab.models.bases import add_base
    from tunelab.serving.pool import InferencePool

    # The operator makes the tiny model servable by name; the Studio never sends a folder.
    add_base("tiny-llama", str(tiny_model_dir))
    key = create_key(services.db, "studio-tests").secret
    pool = InferencePool(services)
    worker = Worker(services.db, services.artifacts)
    thread = threading.Thread(target=worker.run_forever, kwargs={"poll_seconds": 0.2}, daemon=True)
    thread.start()
    with LiveServer(create_app(services, inference=pool)) as server:
        yield server, key, "tiny-llama"
    worker.shutdown.set()
    thread.join(30)
    pool.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def shoot(page, name: str) -> None:
    """Screenshots of the current page at both widths (charts redraw on resize)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar lands mid-page
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})


def log_in(page, url: str, key: str) -> None:
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.click("#login-submit")
    page.wait_for_selector("#topbar:not([hidden])")


def jobs_count(url: str, key: str) -> int:
    r = httpx.get(f"{url}/v1/tuningJobs", headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return len(r.json()["tuning_jobs"])


def rows(n: int, seed: int = 0) -> list[dict]:
    return [
        {
            "input_text": f"item {i}: the {LABELS[(i + seed) % 4]} one",
            "output_text": LABELS[(i + seed) % 4],
        }
        for i in range(n)
    ]


def run_snippet(argv: list[str], key: str) -> str:
    env = {**os.environ, "TUNELAB_API_KEY": key}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_login_wizard_job_playground_and_code(studio, page, tmp_path):
    server, key, tiny = studio
    url = server.url

    # Login: nothing but the login form without a key; a wrong key is refused.
    page.goto(url + "/")
    page.wait_for_selector("#login-form")
    assert page.is_hidden("#topbar")
    shoot(page, "login")
    page.fill("#api-key", "tl-wrong.key")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in page.text_content("#login-error")
    page.fill("#api-key", key)
    page.click("#login-submit")
    page.wait_for_selector("#jobs-table")

    # Wizard on the tiny model: upload, see the validation report, submit.
    train = write_jsonl(tmp_path / "train.jsonl", rows(32))
    validation = write_jsonl(tmp_path / "validation.jsonl", rows(8, seed=1))
    page.click("#nav a[data-page=create]")
    page.wait_for_selector("#create-form")
    page.fill("#display-name", "studio-colors")
    page.fill("#base-model", tiny)
    page.set_input_files("#train-file", str(train))
    page.wait_for_selector("#train-report .report.ok")
    assert "32 usable examples" in page.text_content("#train-report")
    page.set_input_files("#validation-file", str(validation))
    page.wait_for_selector("#validation-report .report.ok")
    page.fill("#param-train_steps", "16")
    page.fill("#param-batch_size", "4")
    page.fill("#param-learning_rate_multiplier", "10")
    page.click("#advanced-params summary")  # the config's other fields, folded until asked for
    page.fill("#param-eval_every_steps", "2")
    page.fill("#param-checkpoint_every_steps", "4")
    assert page.input_value("#param-precision") == "auto"
    page.select_option("#param-precision", "fp32")
    assert page.input_value("#param-accelerator") == "auto"
    page.select_option("#param-accelerator", "cpu")
    assert "16 steps" in page.text_content("#steps-estimate")
    page.wait_for_selector("#submit-job:not([disabled])")
    shoot(page, "create")
    page.click("#submit-job")

    # The job page: live state until SUCCEEDED, then the loss curve and the pipeline.
    page.wait_for_url("**/#/jobs/job-*")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = page.get_attribute("#main", "data-job-state")
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        page.wait_for_timeout(500)
    error = page.text_content("#job-error") if page.query_selector("#job-error") else ""
    assert state == "SUCCEEDED", error
    job_id = page.url.rsplit("/", 1)[-1]
    job = httpx.get(f"{url}/v1/tuningJobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert job.json()["config"]["precision"] == "fp32"  # the form's named choice, sent as text
    assert job.json()["config"]["accelerator"] == "cpu"
    assert page.text_content("#job-accelerator") == "cpu: ran on cpu"  # asked, then used
    page.wait_for_function("document.querySelector('#loss-chart').dataset.points >= 8")
    drawn = page.evaluate(
        """() => { const c = document.querySelector('#loss-chart');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let ink = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) ink++;
                   return ink; }"""
    )
    assert drawn > 1000  # the curve, axes and legend are on the canvas
    assert page.is_disabled("#job-cancel") and page.is_disabled("#job-resume")
    for step in ("validate", "prepare", "train", "evaluate", "register", "deploy"):
        assert page.text_content(f"#pipeline tr[data-step={step}]").count("SUCCEEDED") == 1
    assert "sha256" in page.text_content("#pipeline tr[data-step=train]")
    assert "Billable tokens" in page.text_content("#job-usage")
    page.wait_for_selector("[data-testid=evaluation]")
    shoot(page, "job")

    page.click("#nav a[data-page=jobs]")
    page.wait_for_selector("#jobs-table tr[data-job] >> text=SUCCEEDED")
    shoot(page, "jobs")

    page.click("#nav a[data-page=models]")
    page.wait_for_selector("[data-model=studio-colors] [data-testid=lineage]")
    version = "[data-version='studio-colors@1']"
    assert "deployed on" in page.text_content(version)
    shoot(page, "models")
    page.click(f"{version} button.undeploy")
    page.wait_for_selector(f"{version} button.deploy")
    assert "not deployed" in page.text_content(version)
    page.click(f"{version} button.deploy")
    page.wait_for_selector(f"{version} button.undeploy")
    assert "deployed on" in page.text_content(version)

    # Playground: the tuned model, a streamed completion, side by side with its base.
    page.goto(url + "/#/playground")
    page.wait_for_selector("#model-a option[value=studio-colors]", state="attached")
    page.select_option("#model-a", "studio-colors")
    page.check("#compare")
    page.select_option("#model-b", tiny)
    for side in ("a", "b"):
        page.fill(f"#param-{side}-temperature", "0")
        page.fill(f"#param-{side}-max_tokens", "8")
    page.fill("#prompt", "item 3: the yellow one")
    page.click("#send")
    page.wait_for_selector("#chat-a .turn.assistant[data-done=true]", timeout=300_000)
    page.wait_for_selector("#chat-b .turn.assistant[data-done=true]", timeout=300_000)
    assert not page.query_selector("#sides .alert.bad"), page.text_content("#sides")
    assert "completion tokens" in page.text_content("#chat-a .turn.assistant .stats")
    streamed = page.text_content("#chat-a .turn.assistant .output-text")
    assert streamed.strip(), "the tuned model streamed nothing"

    # View code: each snippet is for this prompt and these parameters, and each works.
    page.click("#view-code-a")
    page.wait_for_selector("#snippet-a-curl", state="attached")
    snippets = {k: page.text_content(f"#snippet-a-{k}") for k in ("python", "openai", "curl")}
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.click("#code-a .tab[data-tab=curl]")
    page.click("#copy-a-curl")
    # Wait for the copy's own toast: an earlier one (the redeploy above) may still be showing.
    page.wait_for_function(
        "/copied|Copy failed/.test(document.querySelector('#toast.show')?.textContent || '')"
    )
    assert "copied" in page.text_content("#toast")
    assert page.evaluate("navigator.clipboard.readText()") == snippets["curl"]
    shoot(page, "playground")

    answer = json.loads(run_snippet(["bash", "-c", snippets["curl"]], key))
    assert answer["choices"][0]["message"]["content"] == streamed  # greedy: same text
    assert run_snippet([sys.executable, "-c", snippets["openai"]], key) == streamed + "\n"
    assert run_snippet([sys.executable, "-c", snippets["python"]], key) == streamed + "\n"

    # Log out: back to the login form, and the key is gone from the session.
    page.click("#logout")
    page.wait_for_selector("#login-form")
    assert page.evaluate("sessionStorage.getItem('tunelab.apiKey')") is None
    assert page.errors == []
    remote = [u for u in page.requests if not u.startswith((url + "/", "data:"))]
    assert remote == [], "the Studio must load everything from its own server"


def test_bad_dataset_shows_line_errors_and_submits_nothing(studio, page, tmp_path):
    server, key, tiny = studio
    good = json.dumps({"input_text": "a", "output_text": "b"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good, "{not json", json.dumps({"input_text": "x"}), good]) + "\n")
    before = jobs_count(server.url, key)

    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#create-form")
    page.fill("#display-name", "never-made")
    page.fill("#base-model", tiny)
    page.set_input_files("#train-file", str(bad))
    page.wait_for_selector("#train-report .report.has-errors:not([aria-busy])")
    lines = page.eval_on_selector_all(
        "#train-report tr[data-line]", "rs => rs.map(r => r.dataset.line)"
    )
    assert lines == ["2", "3"]
    report = page.text_content("#train-report")
    assert "line 2" in report and "line 3" in report and "2 errors" in report
    # (leaving the base model field re-checks the data against its tokenizer: wait for that too)
    page.wait_for_function(
        "document.querySelector('#submit-reason').textContent.includes('errors')"
    )
    assert page.is_disabled("#submit-job")
    assert len(page.query_selector_all("#train-report tr[data-line]")) == 2
    page.press("#display-name", "Enter")  # submitting the form another way does nothing either
    page.wait_for_timeout(500)
    shoot(page, "create-errors")
    assert jobs_count(server.url, key) == before

    # A key that stops working (revoked, wrong) sends the user back to the login form.
    page.evaluate("sessionStorage.setItem('tunelab.apiKey', 'tl-revoked.key')")
    page.goto(server.url + "/#/jobs")
    page.wait_for_selector("#login-form")
    assert "log in again" in page.text_content("#login-error")
    assert page.errors == []


def test_wizard_dpo_checks_preference_pairs(studio, page, tmp_path):
    """DPO pairs are checked by the server (kind=preference) line by line before submitting."""
    server, key, tiny = studio
    pair = {"input_text": "2 + 2?", "candidate_0": "4", "candidate_1": "5", "choice": 0}
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(
        "\n".join(
            [json.dumps(pair), json.dumps({**pair, "choice": 2}), json.dumps({"input_text": "x"})]
        )
        + "\n"
    )
    good = write_jsonl(tmp_path / "good-pairs.jsonl", [pair] * 20)
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#method option[value=dpo][data-supported]", state="attached")
    if page.get_attribute("#method option[value=dpo]", "data-supported") != "true":
        assert "not available" in page.text_content("#method option[value=dpo]")
        return
    page.select_option("#method", "dpo")
    page.fill("#display-name", "dpo-model")
    page.fill("#base-model", tiny)
    assert page.query_selector("#param-beta") and not page.query_selector("#param-max_seq_length")
    page.set_input_files("#preference-file", str(bad))  # the method table's role name
    page.wait_for_selector(
        "#preference-report .report.has-errors[data-kind=preference]:not([aria-busy])"
    )
    lines = page.eval_on_selector_all(
        "#preference-report tr[data-line]", "rs => rs.map(r => r.dataset.line)"
    )
    assert lines == ["2", "3", "3", "3"]  # choice; then candidate_0, candidate_1, choice missing
    assert page.is_disabled("#submit-job")
    page.set_input_files("#preference-file", str(good))
    page.wait_for_selector("#preference-report .report.ok")
    assert "20 usable pairs" in page.text_content("#preference-report")
    page.wait_for_selector("#submit-job:not([disabled])")
    assert page.errors == []


def prompts(n: int, word: str = "Q") -> list[dict]:
    return [{"input_text": f"{word} {i}?"} for i in range(n)]


def open_rlhf_wizard(page, url: str, key: str, tiny: str, name: str) -> None:
    log_in(page, url, key)
    page.goto(url + "/#/create")
    page.wait_for_selector("#method option[value=rlhf][data-supported=true]", state="attached")
    page.select_option("#method", "rlhf")
    page.wait_for_selector("#preference-file")
    assert not page.query_selector("#train-file")  # RLHF's datasets go by their own roles
    page.fill("#display-name", name)
    page.fill("#base-model", tiny)


def test_wizard_rlhf_job_from_the_wizard_to_succeeded(studio, page, tmp_path):
    """RLHF from the wizard on the tiny model: three datasets checked by the server with their
    kind, RLHFConfig's defaults in the form, a job created with the datasets by role."""
    server, key, tiny = studio
    open_rlhf_wizard(page, server.url, key, tiny, "studio-concise")
    # The form shows RLHFConfig's defaults (read from its JSON schema, GET /v1/tuningMethods):
    # compared with the config itself, for the fields it shows first (Vertex's parameters).
    from tunelab.configs.rlhf import RLHFConfig

    fields = RLHFConfig.model_json_schema()["x-form"]["basic"]
    assert "kl_coeff" in fields and "reward_model_train_steps" in fields
    config_defaults = RLHFConfig.model_fields
    defaults = {
        f: "" if config_defaults[f].default is None else str(config_defaults[f].default)
        for f in fields
    }
    for field, value in defaults.items():
        assert page.input_value(f"#param-{field}") == value, field
        assert page.text_content(f"#param-{field} + small").strip(), f"{field} has no guidance"

    small = {
        "reward_model_train_steps": "2",
        "reinforcement_learning_train_steps": "2",
        "prompt_sequence_length": "64",
        "target_sequence_length": "16",
        "instruction": "Answer briefly.",
    }
    for field, value in small.items():
        page.fill(f"#param-{field}", value)
    page.click("#advanced-params summary")  # RLHFConfig's knobs beyond Vertex's parameters
    page.fill("#param-prompts_per_step", "2")
    page.fill("#param-samples_per_prompt", "2")
    files = {
        "preference": write_jsonl(tmp_path / "pairs.jsonl", preference_rows(32)),
        "prompts": write_jsonl(tmp_path / "prompts.jsonl", prompts(8)),
        "eval": write_jsonl(tmp_path / "eval.jsonl", prompts(4, "Held")),
    }
    for role, path in files.items():
        page.set_input_files(f"#{role}-file", str(path))
        page.wait_for_selector(f"#{role}-report .report.ok")
    assert "32 usable pairs" in page.text_content("#preference-report")
    assert "8 usable prompts" in page.text_content("#prompts-report")
    assert "4 usable prompts" in page.text_content("#eval-report")
    assert page.get_attribute("#prompts-report .report", "data-kind") == "prompts"
    assert "2 steps of 2 read" in page.text_content("#prompts-estimate")
    page.wait_for_selector("#submit-job:not([disabled])")
    shoot(page, "create-rlhf")
    page.click("#submit-job")

    page.wait_for_url("**/#/jobs/job-*")
    state = wait_state(page, ("SUCCEEDED", "FAILED", "CANCELLED"), timeout=300)
    error = page.text_content("#job-error") if page.query_selector("#job-error") else ""
    assert state == "SUCCEEDED", error
    steps = ["validate", "reward_model", "reinforcement_learning", "evaluate", "register", "deploy"]
    for step in steps:
        assert "SUCCEEDED" in page.text_content(f"#pipeline tr[data-step={step}]"), step

    job_id = page.url.rsplit("/", 1)[-1]
    headers = {"Authorization": f"Bearer {key}"}
    job = httpx.get(f"{server.url}/v1/tuningJobs/{job_id}", headers=headers).json()
    assert job["method"] == "rlhf" and set(job["datasets"]) == {"preference", "prompts", "eval"}
    assert job["config"]["reward_model_train_steps"] == 2
    assert job["config"]["reinforcement_learning_train_steps"] == 2
    assert job["config"]["instruction"] == "Answer briefly."
    assert job["config"]["samples_per_prompt"] == 2
    assert job["tuned_model"] == "studio-concise@1"
    assert "Preference pairs" in page.text_content("#main")
    page.wait_for_selector("[data-testid=evaluation]")
    assert "Mean reward (base → tuned)" in page.text_content("[data-testid=evaluation]")
    shoot(page, "job-rlhf")
    assert page.errors == []


def test_wizard_rlhf_bad_preference_line_submits_nothing(studio, page, tmp_path):
    server, key, tiny = studio
    rows = preference_rows(20)
    rows[6] = {**rows[6], "choice": "first"}
    bad = write_jsonl(tmp_path / "bad-pairs.jsonl", rows)
    before = jobs_count(server.url, key)
    open_rlhf_wizard(page, server.url, key, tiny, "never-made-rlhf")
    page.set_input_files("#prompts-file", str(write_jsonl(tmp_path / "p.jsonl", prompts(20))))
    page.wait_for_selector("#prompts-report .report.ok")
    page.set_input_files("#preference-file", str(bad))
    page.wait_for_selector("#preference-report .report.has-errors")
    lines = page.eval_on_selector_all(
        "#preference-report tr[data-line]", "rs => rs.map(r => r.dataset.line)"
    )
    assert lines == ["7"]
    report = page.text_content("#preference-report")
    assert "line 7" in report and "1 error" in report and "choice" in report
    page.wait_for_function(
        "document.querySelector('#submit-reason').textContent.includes('errors in the preference')"
    )
    assert page.is_disabled("#submit-job")
    page.press("#display-name", "Enter")  # submitting the form another way does nothing either
    page.wait_for_timeout(500)
    shoot(page, "create-rlhf-errors")
    assert jobs_count(server.url, key) == before

    # The same file fixed: the report clears and the job could be submitted.
    page.set_input_files(
        "#preference-file", str(write_jsonl(tmp_path / "ok.jsonl", preference_rows(20)))
    )
    page.wait_for_selector("#preference-report .report.ok")
    page.wait_for_selector("#submit-job:not([disabled])")
    assert page.errors == []


def test_every_api_call_needs_the_key_but_the_page_is_public(studio):
    server, _, _ = studio
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "TuneLab Studio" in page.text
    assert httpx.get(server.url + "/studio/app.js").status_code == 200
    assert httpx.get(server.url + "/v1/tuningJobs").status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401


def _static() -> Path:
    from tunelab.studio import STATIC

    return STATIC


def test_assets_ship_in_the_package_and_load_nothing_remote():
    files = {p.name for p in _static().iterdir()}
    assert {"index.html", "styles.css", "app.js", "api.js", "chart.js"} <= files
    for path in _static().iterdir():
        text = path.read_text()
        for marker in ("https://", "http://", "//cdn", "@import url("):
            assert marker not in text, f"{path.name} refers to a remote resource ({marker})"


def wait_state(page, states: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.get_attribute("#main", "data-job-state")
        if state in states:
            return state
        page.wait_for_timeout(300)
    raise AssertionError(f"job stayed {state}, expected one of {states}")


def test_job_page_pause_resume_and_cancel(studio, page, tmp_path):
    server, key, tiny = studio
    headers = {"Authorization": f"Bearer {key}"}
    train = write_jsonl(tmp_path / "long.jsonl", rows(32))
    with open(train, "rb") as f:
        dataset = httpx.post(f"{server.url}/v1/datasets", headers=headers, files={"file": f}).json()
    job = httpx.post(
        f"{server.url}/v1/tuningJobs",
        headers=headers,
        json={
            "tuned_model_display_name": "long-run",
            "train_dataset": dataset["id"],
            "config": {"base_model": tiny, "train_steps": 5000, "checkpoint_every_steps": 5},
        },
    ).json()

    log_in(page, server.url, key)
    page.goto(f"{server.url}/#/jobs/{job['id']}")
    wait_state(page, ("RUNNING",))
    page.wait_for_function("document.querySelector('#loss-chart').dataset.points > 0")
    assert page.is_disabled("#job-resume") and page.is_enabled("#job-pause")
    page.click("#job-pause")
    wait_state(page, ("PAUSED",))
    assert page.is_enabled("#job-resume") and page.is_disabled("#job-pause")
    page.click("#job-resume")
    wait_state(page, ("QUEUED", "PENDING", "RUNNING"))
    page.click("#job-cancel")
    wait_state(page, ("CANCELLED",))
    assert page.is_disabled("#job-cancel") and page.is_disabled("#job-pause")
    assert page.errors == []


def test_the_studio_shows_only_what_the_key_scope_allows(studio, services, browser, tmp_path):
    """An inference key sees the playground and no Create, Jobs or Models; a tune key sees Create
    but no Deploy; an admin key sees Deploy. The server refuses the rest anyway (403)."""
    from tunelab.auth import create_key
    from tunelab.registry.endpoints import deploy_version
    from tunelab.registry.models import register_version

    server, admin_key, _ = studio
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"not loaded: the page only lists it")
    colors = register_version(
        services.db, name="scoped-colors", method="sft", base_model="b",
        adapter_uri=str(adapter), adapter_sha256="0" * 64, adapter_size=1, config={},
        data_stats=None, metrics=None, source_job_id=None,
    )  # fmt: skip
    deploy_version(services.db, colors.id)  # /v1/models offers only what is served
    keys = {
        "inference": create_key(services.db, "app", "inference").secret,
        "tune": create_key(services.db, "colleague", "tune").secret,
        "admin": admin_key,
    }

    def logged_in(scope):
        context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        log_in(page, server.url, keys[scope])
        return context, page

    context, page = logged_in("inference")
    page.wait_for_url("**/#/playground")
    page.wait_for_selector("#model-a option", state="attached")
    for nav in ("create", "jobs", "models"):
        assert page.is_hidden(f"#nav a[data-page={nav}]"), nav
    assert page.is_visible("#nav a[data-page=playground]")
    assert not page.query_selector("#main .alert.bad"), page.text_content("#main")
    tuned = page.eval_on_selector_all("#model-a option", "os => os.map(o => o.value)")
    assert "scoped-colors" in tuned  # from /v1/models: the registry itself needs tune
    page.goto(server.url + "/#/create")  # typed by hand: sent back to a page the key may use
    page.wait_for_url("**/#/playground")
    assert not page.query_selector("#create-form")
    shoot(page, "scope-inference")
    assert page.errors == []
    context.close()

    version = "[data-version='scoped-colors@1']"
    context, page = logged_in("tune")
    assert page.is_visible("#nav a[data-page=create]")
    page.click("#nav a[data-page=models]")
    page.wait_for_selector(version)
    assert page.is_visible("#main .page-header a[href='#/create']")
    assert page.is_hidden(f"{version} button.undeploy")  # deployed above: the admin's action
    assert page.errors == []
    context.close()

    context, page = logged_in("admin")
    page.click("#nav a[data-page=models]")
    page.wait_for_selector(f"{version} button.undeploy", state="visible")
    context.close()


def test_the_api_reference_uses_the_studio_key(studio, page):
    """/docs fetches the schema with the key the Studio holds in the tab and sends it with "Try
    it out"; without a key it asks for one. Swagger UI comes from a CDN: stubbed here, offline."""
    server, key, _ = studio
    stub = """window.SwaggerUIBundle = (o) => {
        window.docs = { paths: Object.keys(o.spec.paths),
                        auth: o.requestInterceptor({ headers: {} }).headers.Authorization };
    };"""
    page.route(
        "https://cdn.jsdelivr.net/**",
        lambda route: route.fulfill(
            body=stub if route.request.url.endswith(".js") else "",
            content_type="text/javascript" if route.request.url.endswith(".js") else "text/css",
        ),
    )
    page.goto(server.url + "/docs")
    page.wait_for_selector("#docs-login:not([hidden])")  # no key in this tab yet
    assert page.evaluate("window.docs") is None
    log_in(page, server.url, key)
    page.goto(server.url + "/docs")
    page.wait_for_function("window.docs !== undefined")
    docs = page.evaluate("window.docs")
    assert "/v1/tuningJobs" in docs["paths"] and "/v1/chat/completions" in docs["paths"]
    assert docs["auth"] == f"Bearer {key}"
    assert page.errors == []


def test_wizard_rft_with_a_grader_from_the_form_to_the_pass_rates(studio, page, tmp_path):
    """RFT from the wizard on the tiny model: the grader typed as JSON (submitting waits for it
    to parse), prompts checked by the server, a job whose config carries the grader, and the
    job page showing pass rates base vs tuned with intervals."""
    server, key, tiny = studio
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#method option[value=rft][data-supported=true]", state="attached")
    page.select_option("#method", "rft")
    page.fill("#display-name", "studio-rft")
    page.fill("#base-model", tiny)
    rows = [{"input_text": f"Number {i}?", "answer": i} for i in range(8)]
    page.set_input_files("#train-file", str(write_jsonl(tmp_path / "p.jsonl", rows)))
    page.set_input_files("#validation-file", str(write_jsonl(tmp_path / "v.jsonl", rows[:4])))
    page.wait_for_selector("#train-report .report.ok")
    page.wait_for_selector("#validation-report .report.ok")
    page.fill("#param-grader", '{"type": "numeric",')
    page.wait_for_function(
        "document.querySelector('#submit-reason').textContent.includes('grader is not valid JSON')"
    )
    assert page.is_disabled("#submit-job")
    grader = {"type": "numeric", "reference": "{{item.answer}}"}
    page.fill("#param-grader", json.dumps(grader))
    small = {"train_steps": "2", "target_sequence_length": "4"}
    small |= {"prompts_per_step": "2", "samples_per_prompt": "2"}
    for field, value in small.items():
        page.fill(f"#param-{field}", value)
    page.click("#advanced-params summary")  # the compute fields and grade_cut_answers
    assert page.input_value("#param-accelerator") == "auto"  # compute, as every method has
    page.select_option("#param-accelerator", "cpu")
    page.check("#param-grade_cut_answers")  # a tiny random model rarely ends an answer
    page.wait_for_selector("#submit-job:not([disabled])")
    page.click("#submit-job")

    page.wait_for_url("**/#/jobs/job-*")
    state = wait_state(page, ("SUCCEEDED", "FAILED", "CANCELLED"), timeout=300)
    error = page.text_content("#job-error") if page.query_selector("#job-error") else ""
    assert state == "SUCCEEDED", error
    job_id = page.url.rsplit("/", 1)[-1]
    job = httpx.get(
        f"{server.url}/v1/tuningJobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert job["method"] == "rft" and job["config"]["grader"]["reference"] == "{{item.answer}}"
    assert job["config"]["accelerator"] == "cpu"
    page.wait_for_selector("[data-testid=evaluation]")
    shown = page.text_content("[data-testid=evaluation]")
    assert "Pass rate, tuned" in shown and "[" in shown  # with its interval
    shoot(page, "job-rft")

    # The model page: the version's base-vs-tuned evaluation, each figure with its interval,
    # as REST stores it on the version.
    model = httpx.get(
        f"{server.url}/v1/tunedModels/studio-rft", headers={"Authorization": f"Bearer {key}"}
    ).json()
    evaluation = model["versions"][0]["metrics"]["evaluation"]
    page.click("#nav a[data-page=models]")
    card = "[data-model=studio-rft] [data-testid=metrics-evaluation]"
    page.wait_for_selector(card)
    table = page.inner_text(card)
    for key_, label in (
        ("pass_rate_base", "Pass rate, base"),
        ("pass_rate_tuned", "Pass rate, tuned"),
        ("mean_reward_base", "Mean reward, base"),
        ("mean_reward_tuned", "Mean reward, tuned"),
    ):
        i = evaluation[key_]
        assert i["low"] <= i["value"] <= i["high"]
        assert label in table
    assert "[object Object]" not in table and table.count("[") >= 6  # value [low, high]
    shoot(page, "models-rft")
    assert page.errors == []
