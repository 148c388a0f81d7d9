"""Task inference from prompts and references, and which metrics each task reports."""

import json
from pathlib import Path

from tunelab.evaluation.metrics import METRICS
from tunelab.evaluation.tasks import TASKS, infer_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ticket-routing"

WORDS = "the of and to in is was for on that with as by at from this be it an are".split()


def sentence(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str(i % 3) for i in range(n))


def test_the_example_dataset_is_classification():
    rows = [json.loads(x) for x in (EXAMPLES / "test.jsonl").read_text().splitlines()]
    task, reason = infer_task([r["input_text"] for r in rows], [r["output_text"] for r in rows])
    assert task == "classification"
    assert "4 distinct values" in reason and "billing" in reason


def test_labels_with_varying_case_are_one_label():
    refs = ["Positive", "positive ", "NEGATIVE", "negative"] * 3
    assert infer_task(["review"] * 12, refs)[0] == "classification"


def test_many_labels_seen_once_are_not_classification():
    refs = [f"name{i}" for i in range(40)]  # short but all different
    assert infer_task([f"who is {i}?" for i in range(40)], refs)[0] == "generation"


def test_a_single_label_is_not_classification():
    assert infer_task(["x"] * 10, ["yes"] * 10)[0] != "classification"


def test_up_to_a_fifth_distinct_is_classification_even_with_singletons():
    refs = [f"label {i % 25}" for i in range(200)] + ["rare"]  # 26 labels, one seen once
    assert infer_task(["text"] * 201, refs)[0] == "classification"


def test_qa():
    prompts = [f"Context: {sentence(i, 40)}\nQuestion: what is item {i}?" for i in range(20)]
    refs = [sentence(i, 1 + i % 6) for i in range(20)]
    task, reason = infer_task(prompts, refs)
    assert task == "qa" and "question or context" in reason


def test_summarization():
    prompts = [f"Summarize: {sentence(i, 120)}" for i in range(20)]
    refs = [sentence(i + 1, 15 + i % 10) for i in range(20)]
    task, reason = infer_task(prompts, refs)
    assert task == "summarization" and "of the prompts' length" in reason


def test_generation():
    prompts = [f"Write a story about {i}" for i in range(20)]
    refs = [sentence(i, 60) for i in range(20)]
    assert infer_task(prompts, refs)[0] == "generation"


def test_every_task_reports_known_metrics_with_loss_and_perplexity():
    assert set(TASKS) == {"classification", "summarization", "qa", "generation"}
    for spec in TASKS.values():
        assert set(spec.metrics) <= set(METRICS)
        assert {"exact_match", "loss", "perplexity"} <= set(spec.metrics)
        assert spec.example_metric in spec.metrics
    assert TASKS["classification"].headline == "macro_f1"
    assert {"accuracy", "micro_f1"} <= set(TASKS["classification"].metrics)
    assert TASKS["summarization"].headline == "rouge_l"
    assert TASKS["qa"].headline == "exact_match"
    assert {"bleu", "rouge_l"} <= set(TASKS["generation"].metrics)
