"""Evaluation end to end on a tiny model: batched generation, base vs a tiny tuned adapter, the
saved report, and the ``tunelab eval`` command."""

import io
import json

import pytest
import torch
from rich.console import Console
from support import COLOR_LABELS, color_rows, write_jsonl
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.cli.evaluate import _show
from tunelab.configs import SFTConfig
from tunelab.data.validation import DatasetValidationError, load_supervised
from tunelab.evaluation.dataset import read_eval_set
from tunelab.evaluation.generate import generate_batched
from tunelab.evaluation.model_refs import load_model_ref, resolve_model_ref
from tunelab.evaluation.report import save_report
from tunelab.evaluation.runner import evaluate_models
from tunelab.models import ModelNotFoundError, load_tokenizer
from tunelab.recipes.sft import train_sft
from tunelab.serving.generation import GenerationParams, as_messages, generate
from tunelab.training.eval_loss import evaluate

GREEDY = GenerationParams(temperature=0, max_output_tokens=12)


@pytest.fixture(scope="module")
def color_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colors")
    return (
        write_jsonl(folder / "train.jsonl", color_rows(48)),
        write_jsonl(folder / "val.jsonl", color_rows(16, offset=1000)),
        write_jsonl(folder / "test.jsonl", color_rows(32, offset=2000)),
    )


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_model_dir, color_data):
    """A tiny adapter trained for a few steps: it answers with colour words, the base does not."""
    train, val, _ = color_data
    config = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=24,
        batch_size=8,
        learning_rate_multiplier=10.0,
        eval_every_steps=8,
        checkpoint_every_steps=24,
        seed=7,
    )
    return train_sft(config, train, tmp_path_factory.mktemp("run"), val).adapter_dir


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, tiny_adapter, color_data):
    """Base vs tuned on the test set, with the progress events it reported."""
    events = []
    with pytest.MonkeyPatch.context() as mp:  # module scope: keep the registry out of ~/.tunelab
        mp.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("home")))
        report = evaluate_models(
            [str(tiny_model_dir), str(tiny_adapter)], color_data[2], progress=events.append
        )
    return report, events


def test_batched_greedy_equals_one_at_a_time(tiny_model_dir, tiny_adapter):
    prompts = [
        as_messages(f"item {i}: the {COLOR_LABELS[i % 4]} one" + " really" * (i % 5))
        for i in range(7)
    ]
    # The tuned adapter stops after a word or two, at different steps in a batch...
    tuned = load_model_ref(str(tiny_adapter))
    batched = generate_batched(tuned, prompts, GREEDY, batch_size=3)
    assert batched == [generate(tuned, p, GREEDY) for p in prompts]
    assert any(batched)
    # ...and a randomised model rambles for every token of the budget.
    noisy = load_model_ref(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in noisy.model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    batched = generate_batched(noisy, prompts, GREEDY, batch_size=4)
    assert batched == [generate(noisy, p, GREEDY) for p in prompts]
    assert len({len(b) for b in batched}) > 1 and all(len(b.split()) > 2 for b in batched)


def test_base_vs_tuned_end_to_end(evaluated, tiny_model_dir, tiny_adapter, color_data):
    report, events = evaluated
    base, tuned = str(tiny_model_dir), str(tiny_adapter)
    assert report.task == "classification" and report.task_inferred
    assert "4 distinct values" in report.task_reason
    assert report.labels == sorted(COLOR_LABELS)
    assert (report.n_examples, report.n_available, report.sampled) == (32, 32, False)
    assert report.params["temperature"] == 0
    tokens = max(len(load_tokenizer(tiny_model_dir)(w)["input_ids"]) for w in COLOR_LABELS)
    assert report.params["max_output_tokens"] == 2 * tokens + 16  # sized from the references
    assert [m.ref for m in report.models] == [base, tuned]
    assert [m.kind for m in report.models] == ["base", "adapter"]
    for m in report.models:
        assert list(m.metrics) == report.metrics
        for name, i in m.metrics.items():
            assert i.low <= i.value <= i.high, (m.ref, name, i)
        assert set(m.per_class) == set(COLOR_LABELS)
    assert set(report.differences) == {tuned}

    # The tuned model is far more likely to produce the references, and no worse at matching.
    loss = report.differences[tuned]["loss"]
    assert loss.high < 0 and loss.excludes_zero
    by_ref = {m.ref: m for m in report.models}
    assert by_ref[tuned].metrics["exact_match"].value >= by_ref[base].metrics["exact_match"].value
    assert by_ref[base].unknown_predictions == 32  # the untrained model never says a colour

    # The reference loss is the validation loss training reports, over the whole set.
    loaded = load_model_ref(tuned)
    encoded, _ = load_supervised(color_data[2], loaded.tokenizer)
    model = loaded.model
    expected = evaluate(model, model.get_decoder(), model.get_output_embeddings(), encoded, 8, 2)
    assert by_ref[tuned].metrics["loss"].value == pytest.approx(expected["eval_loss"], rel=1e-4)
    assert by_ref[tuned].metrics["perplexity"].value == pytest.approx(
        torch.tensor(expected["eval_loss"]).exp().item(), rel=1e-4
    )

    spreads = [d.spread for d in report.disagreements]
    assert spreads == sorted(spreads, reverse=True) and all(s > 0 for s in spreads)
    assert len(report.examples) == 32
    for d in report.disagreements:
        assert set(d.outputs) == {base, tuned} and d.reference in COLOR_LABELS

    phases = {(e.model_index, e.phase) for e in events}
    assert {(0, "generating"), (0, "scoring"), (1, "generating"), (1, "scoring")} <= phases
    last = [e for e in events if e.phase == "generating"][-1]
    assert last.done == last.total == 32


def test_save_report_writes_the_json_predictions_and_plots(evaluated, tmp_path):
    report, _ = evaluated
    written = save_report(report, tmp_path / "eval")
    assert sorted(p.name for p in written) == [
        "metrics.png",
        "per_class_f1.png",
        "predictions.jsonl",
        "report.json",
    ]
    assert written[-1].name == "report.json"  # last: its presence means the folder is complete
    for png in ("metrics.png", "per_class_f1.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["task"] == "classification" and saved["headline_metric"] == "macro_f1"
    assert saved["dataset_sha256"] == report.dataset_sha256
    tuned = report.models[1].ref
    assert set(saved["differences"][tuned]["loss"]) == {"value", "low", "high", "excludes_zero"}
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 32 and set(json.loads(lines[0])["outputs"]) == {
        m.ref for m in report.models
    }
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]  # no temp files


def test_terminal_report_shows_task_table_classes_and_disagreements(evaluated):
    report, _ = evaluated
    buf = io.StringIO()
    _show(Console(file=buf, width=250, color_system=None), report)
    text = buf.getvalue()
    assert "task: classification (inferred: the 32 references take 4 distinct values" in text
    assert f"{report.models[1].ref} - {report.models[0].ref}" in text
    for label in ("macro F1 *", "accuracy", "exact match", "perplexity", "per-class F1", "yellow"):
        assert label in text
    assert "where the models disagree most" in text


def test_bad_dataset_fails_before_any_model_is_loaded(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_text": "hi", "output_text": "there"}) + "\n{oops\n")
    events = []
    with pytest.raises(DatasetValidationError) as err:
        evaluate_models([str(tiny_model_dir)], bad, progress=events.append)
    assert f"{bad}:2" in str(err.value)
    assert events == []


def test_unknown_model_and_duplicates_are_refused(tmp_path, color_data):
    with pytest.raises(ModelNotFoundError):
        evaluate_models([str(tmp_path / "nothing-here")], color_data[2])
    with pytest.raises(ValueError, match="twice"):
        evaluate_models(["a", "a"], color_data[2])


def test_model_references_resolve_like_predict(tiny_adapter, tiny_model_dir):
    """A registered tuned model (by name or name@version), an adapter folder, a base model."""
    from tunelab.registry.models import register_version
    from tunelab.services import open_services

    register_version(
        open_services().db,
        name="colors",
        method="sft",
        base_model=str(tiny_model_dir),
        adapter_uri=str(tiny_adapter),
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )
    for name in ("colors", "colors@1"):
        ref = resolve_model_ref(name)
        assert (ref.kind, ref.adapter_dir) == ("tuned", tiny_adapter)
    assert resolve_model_ref(str(tiny_adapter)).kind == "adapter"
    ref = resolve_model_ref(str(tiny_model_dir))
    assert (ref.kind, ref.path) == ("base", tiny_model_dir.resolve())


def test_large_sets_are_sampled_with_a_fixed_seed(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "big.jsonl", color_rows(60))
    a = read_eval_set(path, tokenizer, max_examples=10, seed=0)
    b = read_eval_set(path, tokenizer, max_examples=10, seed=0)
    lines = [e.line for e in a.examples]
    assert lines == [e.line for e in b.examples] == sorted(lines)
    assert a.sampled and a.available == 60 and len(lines) == 10
    assert lines != [
        e.line for e in read_eval_set(path, tokenizer, max_examples=10, seed=1).examples
    ]
    everything = read_eval_set(path, tokenizer, max_examples=None)
    assert not everything.sampled and len(everything.examples) == 60
    assert everything.examples[0].reference == "red"
    assert everything.examples[0].prompt == [{"role": "user", "content": "item 0: the red one"}]


runner = CliRunner()


def test_cli_eval_json_and_saved_files(tmp_path, tiny_model_dir, tiny_adapter, color_data):
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--model",
            str(tiny_adapter),
            "--dataset",
            str(color_data[2]),
            "--max-examples",
            "8",
            "--output",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "classification"
    assert (report["n_examples"], report["n_available"], report["sampled"]) == (8, 32, True)
    assert json.loads((out / "report.json").read_text())["models"] == report["models"]


def test_cli_errors(tmp_path, tiny_model_dir, color_data):
    result = runner.invoke(
        app, ["eval", "--model", "x", "--dataset", str(color_data[2]), "--task", "poetry"]
    )
    assert result.exit_code == 1 and "--task must be one of" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--dataset", str(bad)])
    assert result.exit_code == 1 and f"{bad}:1" in result.output
