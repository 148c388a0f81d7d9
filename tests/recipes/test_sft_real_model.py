"""On the real default model, tuning on the shipped example data raises held-out exact match
well above the base model's. Minutes on CPU: marked slow (CI runs it)."""

import json
from pathlib import Path

import pytest

from tunelab.serving.generation import GenerationParams, as_messages, generate, load_for_inference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ticket-routing"


def exact_match(loaded, rows) -> float:
    # An exact match is a label's tokens then the end of the turn: one token more than the
    # longest label decides every example, and bounds what the rambling base model generates.
    longest = max(len(loaded.tokenizer(r["output_text"]).input_ids) for r in rows)
    greedy = GenerationParams(temperature=0, max_output_tokens=longest + 1)
    hits = sum(
        generate(loaded, as_messages(r["input_text"]), greedy) == r["output_text"] for r in rows
    )
    return hits / len(rows)


@pytest.mark.slow
def test_tuning_raises_heldout_exact_match(ticket_router):
    test_rows = [json.loads(x) for x in (EXAMPLES / "test.jsonl").read_text().splitlines()]
    config, result = ticket_router  # tune sft on the example data (tests/conftest.py)

    base = exact_match(load_for_inference(base_ref=config.base_model), test_rows)
    tuned = exact_match(load_for_inference(adapter_dir=result.adapter_dir), test_rows)
    print(f"held-out exact match: base {base:.2%}, tuned {tuned:.2%} ({len(test_rows)} examples)")
    assert tuned >= 0.8
    assert tuned - base >= 0.5
