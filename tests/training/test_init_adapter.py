"""Starting a LoRA run from another adapter: at step 0 the new model computes what the parent
computes, whatever the parent's rank, alpha and targets (the scale difference is folded into B),
and a parent that cannot fit is refused with the reason."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tunelab.bundle import file_hashes
from tunelab.models import load_causal_lm
from tunelab.training.init_adapter import init_adapter_from

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parent_bundle(base_dir, folder, *, rank, alpha, targets, **options):
    torch.manual_seed(1)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, **options)
    model = get_peft_model(load_causal_lm(base_dir), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tuning_config.json").write_text(json.dumps({"base_model": str(base_dir)}))
    # the manifest as the recipes write it: every file with its sha256 (bundles are verified)
    manifest = {"kind": "lora_adapter", "files": file_hashes(folder)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def fresh(base_dir, rank):
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL, lora_dropout=0.0)
    return get_peft_model(load_causal_lm(base_dir), config)


@pytest.mark.parametrize(
    "rank, alpha, targets, options",
    [
        (8, 16, ALL, {}),
        (4, 16, ["q_proj", "v_proj"], {}),
        (4, 8, ["k_proj", "down_proj"], {"use_rslora": True}),
    ],
)
def test_step_zero_equals_the_parent(tiny_model_dir, tmp_path, rank, alpha, targets, options):
    folder = parent_bundle(
        tiny_model_dir, tmp_path / "p", rank=rank, alpha=alpha, targets=targets, **options
    )
    ids = torch.tensor([[1, 50, 300, 4000, 12, 9, 77]])
    parent = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), folder).eval()
    model = fresh(tiny_model_dir, 8).eval()
    with torch.no_grad():
        before = model(ids).logits
        assert init_adapter_from(model, folder) == 2 * len(targets)
        expected, got = parent(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - before).abs().max() > 1e-3  # it did change the fresh model


def test_a_parent_of_higher_rank_is_refused(tiny_model_dir, tmp_path):
    folder = parent_bundle(tiny_model_dir, tmp_path / "p", rank=16, alpha=32, targets=["q_proj"])
    with pytest.raises(ValueError, match="rank 16 .* adapter_size 16 or more"):
        init_adapter_from(fresh(tiny_model_dir, 8), folder)
