"""The fused LoRA training forward computes exactly what PEFT's does: same loss, same gradients
for every adapter weight, same adapter on disk, and generation still works after fusing."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tunelab.data.batching import collate
from tunelab.data.formats import parse_record
from tunelab.data.template import encode
from tunelab.losses.lm import completion_loss
from tunelab.models import load_causal_lm
from tunelab.training import fused_lora
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.lora import LORA_TARGETS, adamw


def lora_model(model_dir, dropout=0.0):
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=LORA_TARGETS)
    model = get_peft_model(load_causal_lm(model_dir), config)
    with torch.no_grad():  # PEFT starts B at zero, which would hide any error in the LoRA path
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


@pytest.fixture
def batch(tokenizer):
    rows = [
        {"input_text": "What colour is the sky on a clear day?", "output_text": "blue"},
        {"input_text": "Name it.", "output_text": "a fairly long answer of several tokens"},
        {"input_text": "Two plus two equals", "output_text": "four"},
    ]
    encoded = [encode(tokenizer, parse_record(row, i + 1), 256) for i, row in enumerate(rows)]
    return collate(encoded, tokenizer.pad_token_id)  # right-padded to the longest


def loss_and_grads(model, batch):
    loss = train_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def train_loss(model, batch):
    model.train()
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    head = model.get_output_embeddings()
    return completion_loss(hidden, head, batch.input_ids, batch.loss_mask)[0]


def test_same_loss_and_gradients_as_peft(tiny_model_dir, batch):
    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)

    ref_loss, ref_grads = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(fused, batch)

    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    assert len(grads) == 2 * 7 * 2  # A and B of 7 layers in each of 2 blocks
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)


def test_training_steps_match_peft_and_the_saved_adapter_reloads(tmp_path, tiny_model_dir, batch):
    models = [lora_model(tiny_model_dir), lora_model(tiny_model_dir)]
    assert fuse_lora_for_training(models[1])
    for model in models:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        for _ in range(3):
            train_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    peft_state = {n: p for n, p in models[0].named_parameters() if p.requires_grad}
    for name, param in models[1].named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, peft_state[name], rtol=1e-4, atol=1e-5, msg=name)

    # the fused model saves a plain PEFT adapter: PEFT's own forward on it gives the same logits
    models[1].save_pretrained(tmp_path / "adapter", safe_serialization=True)
    reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), tmp_path / "adapter")
    models[1].eval()
    with torch.no_grad():
        expected = reloaded(input_ids=batch.input_ids).logits
        got = models[1](input_ids=batch.input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_generation_with_a_cache_after_fusing(tiny_model_dir, batch):
    reference = lora_model(tiny_model_dir).eval()
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)
    fused.eval()
    prompt = batch.input_ids[:1, :8]
    with torch.no_grad():
        expected = reference.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        got = fused.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


def test_unsupported_models_are_left_to_peft(tiny_model_dir):
    model = lora_model(tiny_model_dir, dropout=0.1)
    attention = model.get_decoder().layers[0].self_attn
    assert not fuse_lora_for_training(model)
    assert "forward" not in vars(attention)  # PEFT's own forward is untouched


def test_a_disabled_adapter_gives_the_base_model(tiny_model_dir, batch):
    fused = lora_model(tiny_model_dir).eval()
    assert fuse_lora_for_training(fused)
    base = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        expected = base(input_ids=batch.input_ids).logits
        with fused.disable_adapter():
            got = fused(input_ids=batch.input_ids).logits
        adapted = fused(input_ids=batch.input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(adapted, expected, atol=1e-2)  # and back on afterwards


def rms_norm_reference(x, weight, eps):
    """transformers' LlamaRMSNorm, as eager ops."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rms_norm_forward_and_gradient_match_the_composite(out_dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 96) * 3 + 0.5).requires_grad_()  # fp32: the residual stream
    weight = torch.rand(96) + 0.5
    grad = torch.randn(3, 5, 96).to(out_dtype)  # a bf16 block hands back a bf16 gradient
    y = fused_lora._RMSNorm.apply(x, weight, 1e-5, out_dtype)
    (dx,) = torch.autograd.grad(y, x, grad)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = rms_norm_reference(x_ref, weight, 1e-5)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad.float())
    assert y.dtype == out_dtype and dx.dtype == torch.float32
    # bf16: the output rounded once, from the same fp32 value (within one bf16 rounding)
    torch.testing.assert_close(
        y, y_ref.to(out_dtype), rtol=1e-5 if out_dtype == x.dtype else 8e-3, atol=1e-6
    )
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_swiglu_forward_and_gradient_match_the_composite(dtype):
    torch.manual_seed(0)
    gate_up = (torch.randn(2, 7, 2 * 48) * 2).to(dtype).requires_grad_()
    grad = torch.randn(2, 7, 48).to(dtype)
    h = fused_lora._SwiGLU.apply(gate_up, 48)
    (d,) = torch.autograd.grad(h, gate_up, grad)
    ref_input = gate_up.detach().float().requires_grad_()
    gate, up = ref_input.split(48, dim=-1)
    h_ref = torch.nn.functional.silu(gate) * up  # eager, in fp32
    (d_ref,) = torch.autograd.grad(h_ref, ref_input, grad.float())
    assert h.dtype == dtype and d.dtype == dtype and d.is_contiguous()
    # bf16: each result within a couple of bf16 roundings of the fp32 value
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h.float(), h_ref, **tolerance)
    torch.testing.assert_close(d.float(), d_ref, **tolerance)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """|got - expected| / |expected| over the whole tensor: summing in another order moves
    single elements by ~1e-6 of the largest; an error in the maths moves all of them."""
    return float((got - expected).norm() / expected.norm())


def test_bf16_mixed_precision_tracks_fp32(tiny_model_dir, batch):
    """bf16 rounds, so it cannot match exactly: the loss within 1% and every adapter gradient
    within a few percent of PEFT's fp32 ones, returned in fp32 for the optimizer; an error in
    the bf16 path (a lost LoRA term, a wrong cast) is off by far more."""
    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused, torch.bfloat16)
    ref_loss, ref_grads = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(fused, batch)

    assert loss == pytest.approx(ref_loss, rel=1e-2)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert grads[name].dtype == torch.float32, name
        assert relative_error(grads[name], ref) < 0.05, name
    # the residual stream stays fp32 while the blocks compute in bf16
    fused.train()
    hidden = fused.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    assert hidden.dtype == torch.float32


def test_bf16_training_leaves_evaluation_and_generation_in_fp32(tiny_model_dir, batch):
    reference = lora_model(tiny_model_dir).eval()
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused, torch.bfloat16)
    train_loss(fused, batch).backward()  # a bf16 training step first
    fused.eval()
    with torch.no_grad():
        expected = reference(input_ids=batch.input_ids).logits
        got = fused(input_ids=batch.input_ids).logits
        prompt = batch.input_ids[:1, :8]
        generated = fused.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        expected_generated = reference.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # exact: fp32 in eval mode
    assert torch.equal(generated, expected_generated)


def frozen_groups(model):
    for layer in model.get_decoder().layers:
        attention, mlp = layer.self_attn.forward, layer.mlp.forward
        yield from (attention.qkv, attention.o, mlp.gate_up, mlp.down)


def test_frozen_weights_are_stacked_per_compute_dtype_when_first_used(tiny_model_dir, batch):
    """A bf16 training step makes the bf16 stacks only (no fp32 copy of every frozen weight);
    the fp32 stacks, made by an fp32 (evaluation) pass, hold the base weights themselves (the
    originals become views: no second copy) and equal them, as the bf16 ones equal them
    rounded."""
    model = lora_model(tiny_model_dir)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    assert fuse_lora_for_training(model, torch.bfloat16)
    assert all(not group.frozen for group in frozen_groups(model))  # nothing made up front
    train_loss(model, batch).backward()
    assert all(list(group.frozen) == [torch.bfloat16] for group in frozen_groups(model))

    model.eval()
    with torch.no_grad():
        model(input_ids=batch.input_ids)
    for group in frozen_groups(model):
        assert set(group.frozen) == {torch.bfloat16, torch.float32}
        fp32, bf16 = group.frozen[torch.float32][0], group.frozen[torch.bfloat16][0]
        torch.testing.assert_close(bf16, fp32.to(torch.bfloat16), rtol=0, atol=0)
        row = 0
        for base, out in zip(group.bases, group.outs, strict=True):
            assert base.weight.data_ptr() == fp32[row : row + out].data_ptr()  # a view
            row += out
    for name, param in model.named_parameters():
        if "base_layer" in name:
            assert torch.equal(param, originals[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_first_pass_in_inference_mode_leaves_training_possible(tiny_model_dir, batch, dtype):
    """The stacked weights are made by the first pass at their dtype: when that pass runs in
    inference mode (RFT's rollouts, an evaluation), they must still be normal tensors that a
    later training step can save for its backward."""
    reference = lora_model(tiny_model_dir)
    model = copy.deepcopy(reference)
    assert fuse_lora_for_training(model, dtype)
    model.train()  # the mode in which the norms hand the blocks the compute dtype
    with torch.inference_mode():
        model.get_decoder()(input_ids=batch.input_ids)
    loss, grads = loss_and_grads(model, batch)  # raised "Inference tensors cannot be saved"
    ref_loss, _ = loss_and_grads(reference, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert all(g.abs().max() > 0 for g in grads.values())


@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "no-input-grad"])
def test_the_widened_bf16_matmul_computes_the_lora_linear(input_grad):
    """[x | x A^T | 0] [W | s B | 0]^T in one matmul (q|k|v's shapes, three layers of rank 4):
    the output and every gradient as the two-matmul form computes them, within bf16's
    rounding; a lost or misplaced LoRA block is off by far more."""
    torch.manual_seed(0)
    bf16, n, width, outs, rank, scaling = torch.bfloat16, 40, 64, [64, 32, 32], 4, 2.0
    weight = (torch.randn(sum(outs), width) * 0.1).to(bf16)
    a = [torch.randn(rank, width, requires_grad=True) for _ in outs]
    b = [torch.randn(out, rank, requires_grad=True) for out in outs]
    x = torch.randn(n, width).to(bf16).requires_grad_(input_grad)
    grad_y = torch.randn(n, sum(outs)).to(bf16)

    def run(fn, *args):
        y = fn.apply(x, *args, scaling, *a, *b)
        y.backward(grad_y)
        grads = [t.grad.clone() for t in (*a, *b)] + ([x.grad.clone()] if input_grad else [])
        for t in (*a, *b, x):
            t.grad = None
        return [y.float(), *(g.float() for g in grads)]

    columns = 32 - width % 32 + 32  # room for k r = 12 LoRA columns, width kept a multiple of 32
    wide = torch.zeros(sum(outs), width + columns, dtype=bf16)
    wide[:, :width] = weight
    wide[:, width : width + 3 * rank] = torch.block_diag(*b).detach().mul(scaling).to(bf16)
    stacked_a = torch.cat(a).detach().to(bf16)
    expected = run(fused_lora._LoraLinear, weight, None)
    got = run(fused_lora._AugmentedLoraLinear, wide, stacked_a, None)
    for g, e in zip(got, expected, strict=True):
        assert relative_error(g, e) < 2e-2


def test_bf16_lora_copies_follow_steps_adapter_switches_and_disabling(
    tiny_model_dir, batch, tmp_path
):
    """The widened bf16 matmul keeps bf16 copies of the active adapter's weights, rewritten
    when they change: after an optimizer step (whose fused kernel does not bump the weights'
    version counters: tunelab's adamw does), with another adapter switched on (the RL stage's
    reward adapter; here of 4x the rank, loaded after the copies were made: q|k|v's copy gets
    wider) and with the adapters disabled (its reference), the model computes what a copy of it
    with no copies made yet computes."""
    torch.manual_seed(1)
    config = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS)
    other = get_peft_model(load_causal_lm(tiny_model_dir), config)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    model = lora_model(tiny_model_dir)
    assert fuse_lora_for_training(model, torch.bfloat16)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_loss(model, batch).backward()  # makes the bf16 copies of ``default``
    assert any(torch.bfloat16 in group.wide for group in frozen_groups(model))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.load_adapter(tmp_path / "other", adapter_name="reward", is_trainable=False)
    model.set_adapter("default")

    fresh = copy.deepcopy(model)
    for group in frozen_groups(fresh):
        group.frozen.clear(), group.wide.clear(), group.lora.clear()

    def hidden(m):
        m.train()  # the norms hand the blocks bf16 in training mode only (load_adapter evals)
        return m.get_decoder()(input_ids=batch.input_ids).last_hidden_state

    def same(got, expected):  # a wider copy's zero columns may change the summing order
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        after_step = hidden(model)
        same(after_step, hidden(fresh))
        for m in (model, fresh):
            m.set_adapter("reward")
        scored = hidden(model)
        same(scored, hidden(fresh))
        assert not torch.allclose(scored, after_step, atol=1e-2)
        with model.disable_adapter(), fresh.disable_adapter():
            same(hidden(model), hidden(fresh))
        for m in (model, fresh):
            m.set_adapter("default")
        same(hidden(model), after_step)
    widths = [g.wide[torch.bfloat16].shape[1] - g.width for g in frozen_groups(model) if g.wide]
    assert 32 in widths and 64 in widths  # q|k|v's copy was widened for the rank-16 adapter
