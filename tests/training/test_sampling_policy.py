"""The rollouts' merged copy of the policy (tunelab.training.sampling_policy): it computes the
live PEFT policy's logits within bf16 rounding, follows the adapter after every change once
refreshed, samples reproducibly through the runner, and stays out of the way where it cannot
merge exactly or the run computes in fp32."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving.generation import GenerationParams
from tunelab.serving.prepacked import PrepackedLinear
from tunelab.serving.runner import ModelRunner, sample_answers
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.lora import LORA_TARGETS, with_lora
from tunelab.training.sampling_policy import SamplingPolicy


def policy(model_dir, seed=0):
    """A LoRA policy whose adapter visibly changes the logits (PEFT starts B at zero)."""
    torch.manual_seed(seed)
    model = with_lora(load_causal_lm(model_dir), 4, 8, task_type="CAUSAL_LM")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model.eval()


@pytest.fixture
def ids(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    return torch.tensor([prompt_ids(tok, [{"role": "user", "content": "a question on owls"}])])


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids).logits.float()  # (1, T, V)


def test_the_copy_computes_the_policys_logits_and_follows_every_adapter_change(tiny_model_dir, ids):
    model = policy(tiny_model_dir)
    fuse_lora_for_training(model, torch.bfloat16)  # as in a bf16 run: base weights are views
    sampling = SamplingPolicy(model, "bf16")
    assert sampling.merged
    copy = sampling.current()
    before = logits(model, ids)
    # bf16 rounding of weights and activations (~0.01 of the largest logit here)
    tolerance = 0.03 * before.abs().max().item()
    torch.testing.assert_close(logits(copy, ids), before, atol=tolerance, rtol=0)

    with torch.no_grad():  # an adapter update: every B flips, so the LoRA terms reverse
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.neg_()
    after = logits(model, ids)
    assert (after - before).abs().max() > 10 * tolerance  # the change is far above rounding
    stale = logits(copy, ids)
    assert (stale - after).abs().max() > 10 * tolerance  # not refreshed yet: the old policy
    assert sampling.current() is copy  # refreshed in place: no second copy
    torch.testing.assert_close(logits(copy, ids), after, atol=tolerance, rtol=0)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
def test_prepacked_layers_compute_exactly_the_plain_bf16_matmul_after_every_merge(tiny_model_dir):
    model = policy(tiny_model_dir)
    sampling = SamplingPolicy(model, "bf16")
    copy = sampling.current()
    packed = [m for m in copy.modules() if isinstance(m, PrepackedLinear)]
    assert packed and copy.lm_head in packed  # every linear layer, the output head included
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # still tied

    def exact():
        for layer in packed:
            x = torch.randn(3, 2, layer.in_features).bfloat16()  # (B, T, in): as decode calls
            plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
            assert torch.equal(layer(x), plain)  # the same kernel, the reorder done ahead

    exact()
    with torch.no_grad():  # an adapter update: the merged weights change, the packs must too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.neg_()
    sampling.current()
    exact()


def test_the_merged_weights_are_one_rounding_of_w_plus_scaled_ba(tiny_model_dir):
    model = policy(tiny_model_dir)
    copy = SamplingPolicy(model, "bf16").current()
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = (layer.base_layer.weight + layer.scaling["default"] * b @ a).bfloat16()
    got = copy.model.layers[1].mlp.down_proj.weight
    assert got.dtype == torch.bfloat16
    # Equal but for the last bit where the fp32 sum's order (addmm) rounds the other way.
    assert (got.float() - expected.float()).abs().max() <= expected.float().abs().max() * 2**-7
    assert (got == expected).float().mean() > 0.99


def test_the_copy_holds_each_weight_once_in_bf16_and_no_peft_layer(tiny_model_dir):
    model = policy(tiny_model_dir)
    copy = SamplingPolicy(model, "bf16").current()
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # tied, as in the base model
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in copy.parameters())
    assert {b.dtype for b in copy.buffers()} == {torch.float32}  # rotary tables stay fp32
    assert not any("lora" in name for name, _ in copy.named_modules())
    live = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert sum(p.numel() for p in copy.parameters()) == live


def test_rollouts_from_the_copy_are_seeded_and_reproducible(tiny_model_dir, ids):
    tok = load_tokenizer(tiny_model_dir)
    params = GenerationParams(temperature=1.0, top_k=0, top_p=1.0, max_output_tokens=8, seed=3)
    prompts = [ids[0].tolist(), ids[0, :-2].tolist()]
    draws = []
    for _ in range(2):  # a fresh copy of a fresh policy each time: same seeds, same tokens
        copy = SamplingPolicy(policy(tiny_model_dir), "bf16").current()
        answers, _ = sample_answers(ModelRunner(copy, tok), prompts, 3, params)
        draws.append([a.tolist() for a in answers])
    assert draws[0] == draws[1]
    assert len({tuple(a) for a in draws[0]}) > 1  # sampled, not one answer repeated


def test_an_fp32_run_samples_from_the_live_policy(tiny_model_dir):
    model = policy(tiny_model_dir)
    sampling = SamplingPolicy(model, "fp32")
    assert not sampling.merged
    assert sampling.current() is model


def test_an_adapter_that_does_not_merge_as_w_plus_ba_is_sampled_live(tiny_model_dir):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, use_dora=True)
    model = get_peft_model(load_causal_lm(tiny_model_dir), config)
    sampling = SamplingPolicy(model, "bf16")
    assert sampling.current() is model


def test_an_unknown_precision_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="fp32 or bf16"):
        SamplingPolicy(policy(tiny_model_dir), "auto")
