"""Reinforcement fine-tuning with a grader on a tiny model: the per-step numbers (rewards from
the grader, pass rates, the KL starting at zero), the exact bundle, grader failures counted
without stopping the run, resume equal to uninterrupted, and base-vs-tuned evaluation with
bootstrap intervals."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import write_jsonl

from tunelab.configs.rft import RFTConfig
from tunelab.data.rft import load_rft
from tunelab.data.validation import DatasetValidationError
from tunelab.graders.build import Grader, build_grader
from tunelab.recipes.rft import evaluate_rft, grade_answers, train_rft
from tunelab.training.run import TrainingInterrupted

EXAMPLE_GRADER = Path(__file__).resolve().parents[2] / "examples" / "rft" / "grader.json"

# Dense enough for a random tiny model to get different rewards within a group.
SIMILAR = {"type": "text_similarity", "metric": "fuzzy_ratio", "reference": "{{item.reference}}"}


def rft_config(model_dir, **overrides):
    values = dict(
        base_model=str(model_dir),
        grader=SIMILAR,
        pass_threshold=0.2,
        train_steps=4,
        learning_rate_multiplier=10.0,
        target_sequence_length=6,
        prompts_per_step=2,
        samples_per_prompt=3,
        checkpoint_every_steps=2,
        seed=11,
        grade_cut_answers=True,  # a random tiny model rarely ends within 6 tokens
    )
    return RFTConfig(**(values | overrides))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rft")
    return write_jsonl(
        folder / "prompts.jsonl",
        [
            {"input_text": f"Say the word number {i}.", "reference": f"word {i}", "answer": i}
            for i in range(12)
        ],
    )


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_policy_trains_on_grader_rewards(tmp_path, tiny_model_dir, prompts):
    result = train_rft(rft_config(tiny_model_dir), prompts, tmp_path / "run")

    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert 0 <= row["reward"] <= 1 and 0 <= row["pass_rate"] <= 1
        assert row["grader_failures"] == 0 and 1 <= row["response_length"] <= 6
        assert row["reward_std"] > 0  # fuzzy ratios of random answers differ
    # The policy's LoRA is zero before the first update: policy = reference, KL 0.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert any(r["kl"] > 1e-4 for r in rows[1:])
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tuning_config.json",
        "metrics.jsonl",
        "reward_curve.png",
        "manifest.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    saved = json.loads((result.adapter_dir / "tuning_config.json").read_text())
    assert saved["method"] == "rft" and saved["grader"]["metric"] == "fuzzy_ratio"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_kl_coeff_zero_skips_the_reference_pass(tmp_path, tiny_model_dir, prompts, monkeypatch):
    import peft

    def no_reference(self):
        raise AssertionError("kl_coeff=0 must not run the reference model")

    monkeypatch.setattr(peft.PeftModel, "disable_adapter", no_reference)
    config = rft_config(tiny_model_dir, kl_coeff=0.0, train_steps=1)
    result = train_rft(config, prompts, tmp_path / "run")
    assert rows_of(result.adapter_dir / "metrics.jsonl")[0]["kl"] is None


def test_a_failing_python_grader_is_counted_and_the_run_goes_on(
    tmp_path, tiny_model_dir, prompts, monkeypatch
):
    folder = tmp_path / "graders"
    folder.mkdir()
    (folder / "flaky.py").write_text(
        "def grade(sample, item):\n"
        "    if item['answer'] % 2:\n"
        "        raise RuntimeError('odd')\n"
        "    return len(sample['output_text']) / 100\n"
    )
    monkeypatch.setenv("TUNELAB_PYTHON_GRADERS", str(folder))
    config = rft_config(tiny_model_dir, grader={"type": "python", "source": "flaky"}, train_steps=2)
    result = train_rft(config, prompts, tmp_path / "run")
    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    assert result.grader_failures == sum(r["grader_failures"] for r in rows) > 0
    assert result.steps == 2


def test_a_line_missing_a_graded_field_fails_with_its_number(tmp_path, tiny_model_dir):
    data = write_jsonl(
        tmp_path / "p.jsonl",
        [{"input_text": "a", "reference": "x"}, {"input_text": "b"}, {"input_text": "c"}],
    )
    with pytest.raises(DatasetValidationError) as info:
        train_rft(rft_config(tiny_model_dir), data, tmp_path / "run")
    errors = info.value.report.errors
    assert [(e.line, e.code, e.field) for e in errors] == [
        (2, "missing_field", "reference"),
        (3, "missing_field", "reference"),
    ]


def test_interrupted_run_resumes_to_the_same_policy(tmp_path, tiny_model_dir, prompts):
    config = rft_config(tiny_model_dir, train_steps=4)
    straight = train_rft(config, prompts, tmp_path / "straight")
    done = []
    with pytest.raises(TrainingInterrupted):
        train_rft(
            config,
            prompts,
            tmp_path / "resumed",
            on_progress=lambda p: done.append(p.step) if p.phase == "training" else None,
            should_stop=lambda: len(done) >= 2,
        )
    resumed = train_rft(config, prompts, tmp_path / "resumed")
    assert resumed.resumed_from_step == 2
    expected = load_file(straight.adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    a = rows_of(straight.adapter_dir / "metrics.jsonl")
    b = rows_of(resumed.adapter_dir / "metrics.jsonl")
    assert [r["reward"] for r in b] == pytest.approx([r["reward"] for r in a], abs=1e-6)


def test_evaluation_against_the_base_model(tmp_path, tiny_model_dir, prompts):
    result = train_rft(rft_config(tiny_model_dir, train_steps=2), prompts, tmp_path / "run")
    held_out = write_jsonl(
        tmp_path / "eval.jsonl",
        [{"input_text": f"Other {i}", "reference": f"word {i}"} for i in range(6)],
    )
    report = evaluate_rft(result.adapter_dir, held_out, examples=2, resamples=200)
    assert report["prompts"] == 6 and len(report["examples"]) == 2
    for key in ("mean_reward", "pass_rate"):
        for who in ("base", "tuned"):
            i = report[f"{key}_{who}"]
            assert i["low"] <= i["value"] <= i["high"]
        diff = report[f"{key}_difference"]
        assert diff["value"] == pytest.approx(
            report[f"{key}_tuned"]["value"] - report[f"{key}_base"]["value"]
        )
    examples = report["examples"]
    base_mean = sum(e["reward_base"] for e in examples) / 2
    assert 0 <= base_mean <= 1


def test_a_cut_answer_scores_zero_without_being_graded():
    """An answer the token budget stopped is unfinished: it scores 0 and the grader never sees
    it (the example's format check would pass ``Answer: 4316000000``, and that partial credit
    is how a policy learned to repeat digits), unless ``grade_cut_answers`` asks otherwise."""
    spec = json.loads(EXAMPLE_GRADER.read_text())  # mean of format (regex) and value (numeric)
    inner, seen = build_grader(spec), []

    def spy(samples, items):
        seen.append(list(samples))
        return inner.grade(samples, items)

    grader = Grader(inner.spec, spy)
    texts = ["Answer: 4316", "Answer: 4316000000", "Answer: 4317", "The bakery sold 4316"]
    items = [{"answer": 4316}] * 4
    cut = [False, True, False, True]

    graded = grade_answers(grader, texts, items, cut, RFTConfig(grader=spec))
    assert graded.scores.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert seen == [["Answer: 4316", "Answer: 4317"]]
    assert {k: v.tolist() for k, v in graded.parts.items()} == {
        "format": [1.0, 0.0, 1.0, 0.0],
        "value": [1.0, 0.0, 0.0, 0.0],
    }

    every = RFTConfig(grader=spec, grade_cut_answers=True)
    assert grade_answers(grader, texts, items, cut, every).scores.tolist() == [1.0, 0.5, 0.5, 0.0]

    seen.clear()
    none_ended = grade_answers(grader, texts[:2], items[:2], [True, True], RFTConfig(grader=spec))
    assert none_ended.scores.tolist() == [0.0, 0.0] and seen == []


def test_gemini_contents_prompts_carry_the_graders_fields(tmp_path, tokenizer):
    """Prompts in Gemini's ``contents`` form (with a ``systemInstruction``) beside ``messages``
    lines in one file: each whole line is the grader's item, and a line missing a field the
    grader reads fails with its number."""
    grader = RFTConfig(grader={"type": "numeric", "reference": "{{item.answer}}"}).grader

    def asked(text):
        return {"role": "user", "parts": [{"text": text}]}

    rows = [
        {
            "systemInstruction": {"parts": [{"text": "Reply with a number."}]},
            "contents": [asked("Seven?")],
            "answer": 7,
            "reference": "7",
        },
        {"messages": [{"role": "user", "content": "Eight?"}], "answer": 8},
        {"contents": [asked("Nine?")]},
    ]
    with pytest.raises(DatasetValidationError) as info:
        load_rft(write_jsonl(tmp_path / "bad.jsonl", rows), tokenizer, grader)
    assert [(e.line, e.code, e.field) for e in info.value.report.errors] == [
        (3, "missing_field", "answer")
    ]
    prompts, items, report = load_rft(
        write_jsonl(tmp_path / "ok.jsonl", rows[:2]), tokenizer, grader
    )
    assert [p.text for p in prompts] == ["Seven?", "Eight?"] and items == rows[:2]
    assert report.formats == {"prompt_contents": 1, "prompt_messages": 1}
    assert build_grader(grader).grade(["7", "8.0"], items).scores.tolist() == [1.0, 1.0]


def test_a_step_where_no_rewards_differ_makes_no_update(
    tmp_path, tiny_model_dir, prompts, monkeypatch
):
    """Nothing passes, so no group's rewards differ: the step's loss leaves out the KL term too
    and its gradient is zero. At the start that KL gradient is only rounding noise between the
    bf16 policy pass and the reference pass, and AdamW scales any gradient to a step of about the
    learning rate: on the real example it scrambled the policy before any answer had passed."""
    import tunelab.recipes.rft as recipe

    used = []

    def recording(*args, **kwargs):
        used.append(args[4])  # the KL weight the step used
        return recipe_loss(*args, **kwargs)

    recipe_loss = recipe.grpo_loss
    monkeypatch.setattr(recipe, "grpo_loss", recording)
    never = {"type": "string_check", "operation": "eq", "reference": "never said"}
    config = rft_config(tiny_model_dir, grader=never, train_steps=2, precision="bf16", kl_coeff=1.0)
    result = train_rft(config, prompts, tmp_path / "run")
    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    assert [(r["informative_groups"], r["reward"], r["grad_norm"]) for r in rows] == [
        (0, 0.0, 0.0),
        (0, 0.0, 0.0),
    ]
    assert used == [0.0, 0.0]
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(w) == 0 for w in lora_b)  # still the base

    used.clear()  # rewards that differ: the KL term is in
    train_rft(rft_config(tiny_model_dir, train_steps=1, kl_coeff=1.0), prompts, tmp_path / "r2")
    assert used == [1.0]
