"""The fast training path (fused LoRA forward, shared prompt prefix computed once) gives the
losses of DPO, the reward model and RLOO, and every gradient, that PEFT's plain forward over the
unpacked batch gives; and the fused model steps aside while another adapter is active."""

import copy

import pytest
import torch
from support import preference_rows, write_jsonl
from test_fused_lora import relative_error

from tunelab.data.batching import collate
from tunelab.data.preference import collate_pairs, load_preference, sequence
from tunelab.losses.dpo import dpo_loss
from tunelab.losses.reward import pairwise_loss
from tunelab.losses.rl import rloo_advantages, rloo_loss, sequence_logprobs
from tunelab.models import load_causal_lm
from tunelab.models.reward_head import rewards_at
from tunelab.training.fast_path import FastPath
from tunelab.training.lora import with_lora
from tunelab.training.prefix_sharing import row_lengths


def lora_model(model_dir):
    torch.manual_seed(0)
    model = with_lora(load_causal_lm(model_dir), 4, 8, task_type="CAUSAL_LM")
    with torch.no_grad():  # PEFT starts B at zero, which would hide any error in the LoRA path
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model.train()


@pytest.fixture
def pairs(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    encoded, _ = load_preference(
        path, tokenizer, prompt_sequence_length=64, target_sequence_length=24
    )
    return encoded


def plain_hidden(model, input_ids, mask):
    return model.get_decoder()(input_ids=input_ids).last_hidden_state, 0


def fast_hidden(fast):
    def hidden(model, input_ids, mask):
        out, offset = fast.hidden(input_ids, mask)
        assert offset > 0, "the batch shares its chat-template prefix: it must be packed"
        return out, offset

    return hidden


def dpo(model, hidden_of, batch):
    hidden, p = hidden_of(model, batch.input_ids, batch.response_mask)
    head = model.get_output_embeddings()
    logps = sequence_logprobs(hidden, head, batch.input_ids[:, p:], batch.response_mask[:, p:])
    chosen, rejected = logps.chunk(2)
    reference = torch.linspace(-30.0, -10.0, 2 * len(chosen)).view(-1, 2)
    return dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], 0.1).loss


def reward(model, hidden_of, batch, head):
    hidden, p = hidden_of(model, batch.input_ids, batch.response_mask)
    chosen, rejected = rewards_at(head, hidden, batch.lengths - 1 - p).chunk(2)
    return pairwise_loss(chosen, rejected)


def rloo(model, hidden_of, batch):
    hidden, p = hidden_of(model, batch.input_ids, batch.loss_mask)
    head = model.get_output_embeddings()
    logps = sequence_logprobs(hidden, head, batch.input_ids[:, p:], batch.loss_mask[:, p:])
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5, -0.2, 0.1, 0.9]).view(2, 4)
    return rloo_loss(logps, rloo_advantages(rewards).view(-1))


def loss_and_grads(model, loss_fn, extra=()):
    loss = loss_fn()
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params += [(f"extra.{i}", p) for i, p in enumerate(extra)]
    grads = {n: p.grad.clone() for n, p in params}
    model.zero_grad(set_to_none=True)
    for p in extra:
        p.grad = None
    return loss.item(), grads


def assert_same(got, expected):
    (loss, grads), (ref_loss, ref_grads) = got, expected
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        assert relative_error(grads[name], ref) < 1e-5, name


@pytest.fixture
def models(tiny_model_dir):
    plain = lora_model(tiny_model_dir)
    fused = copy.deepcopy(plain)
    fast = FastPath.install(fused, "fp32")
    assert fast.fused and fast.share_prefix
    return plain, fused, fast


def test_dpo_loss_and_gradients_match_peft(models, pairs, tokenizer):
    plain, fused, fast = models
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    expected = loss_and_grads(plain, lambda: dpo(plain, plain_hidden, batch))
    assert_same(loss_and_grads(fused, lambda: dpo(fused, fast_hidden(fast), batch)), expected)


def test_reward_model_loss_and_gradients_match_peft(models, pairs, tokenizer):
    plain, fused, fast = models
    batch = collate_pairs(pairs, tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(1)
    head = torch.nn.Linear(plain.config.hidden_size, 1, bias=False)  # not zero: grads flow
    expected = loss_and_grads(
        plain, lambda: reward(plain, plain_hidden, batch, head), [head.weight]
    )
    got = loss_and_grads(
        fused, lambda: reward(fused, fast_hidden(fast), batch, head), [head.weight]
    )
    assert_same(got, expected)


def test_rloo_loss_and_gradients_match_peft(models, pairs, tokenizer):
    """Two prompts with four sampled answers each, as a rollout batch is laid out."""
    plain, fused, fast = models
    answers = [p.chosen_ids if i % 2 else p.rejected_ids for i, p in enumerate(pairs)]
    rows = [sequence(pairs[i // 4].prompt_ids, answers[i % 4]) for i in range(8)]
    batch = collate(rows, tokenizer.pad_token_id)
    expected = loss_and_grads(plain, lambda: rloo(plain, plain_hidden, batch))
    assert_same(loss_and_grads(fused, lambda: rloo(fused, fast_hidden(fast), batch)), expected)


def test_another_active_adapter_is_the_one_computed(tiny_model_dir, pairs, tokenizer, tmp_path):
    """The RL stage scores with the reward adapter on the policy's fused model: the fused
    forward must compute that adapter, not the policy's."""
    other = lora_model(tiny_model_dir)
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    plain = lora_model(tiny_model_dir)
    with torch.no_grad():
        for name, param in plain.named_parameters():
            if "lora_B" in name:
                param.mul_(-1)  # unlike ``other``'s
    fused = copy.deepcopy(plain)
    for model in (plain, fused):
        model.load_adapter(tmp_path / "other", adapter_name="reward", is_trainable=False)
        model.set_adapter("default")
    assert FastPath.install(fused, "fp32").fused
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        for model in (plain, fused):
            model.eval()
        policy = fused.get_decoder()(input_ids=batch.input_ids).last_hidden_state
        for model in (plain, fused):
            model.set_adapter("reward")
        expected = plain.get_decoder()(input_ids=batch.input_ids).last_hidden_state
        got = fused.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, policy, atol=1e-2)


def test_with_adapters_disabled_the_fast_path_computes_the_base_model(models, pairs, tokenizer):
    """The RL stage's reference: the policy's fused model with its adapter switched off, through
    the fast path without a gradient (packed; fp32 here), gives the base model's states, and
    the model keeps its mode."""
    plain, fused, fast = models
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    ids, mask = batch.input_ids, batch.response_mask
    fused.eval()
    with torch.no_grad(), plain.disable_adapter():
        expected = plain.get_decoder()(input_ids=ids).last_hidden_state
    with fused.disable_adapter():
        got, p = fast.hidden_no_grad(ids, mask)
    tuned, _ = fast.hidden_no_grad(ids, mask)
    assert p > 0 and not got.requires_grad and not fused.training
    for row, n in enumerate(row_lengths(mask)):  # past a row's last target: stand-ins
        torch.testing.assert_close(got[row, : n - p], expected[row, p:n], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, tuned, atol=1e-2)


def test_no_grad_pass_leaves_the_mode_it_found_and_computes_alike(models, pairs, tokenizer):
    """RLOO switches the model to train mode once per step, before its passes without a graph:
    those compute in the fused path's train mode whatever mode they find, and leave it."""
    _, fused, fast = models
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    fused.train()
    in_train, _ = fast.hidden_no_grad(batch.input_ids, batch.response_mask)
    assert fused.training
    fused.eval()
    in_eval, _ = fast.hidden_no_grad(batch.input_ids, batch.response_mask)
    assert not fused.training and not any(m.training for m in fused.modules())
    assert torch.equal(in_train, in_eval)


def test_scores_read_at_the_last_token_without_a_graph(models, pairs, tokenizer):
    """The RL stage scores each sample at its last token through ``hidden_at_no_grad`` (the
    last layer computes those tokens alone): the states the full no-grad pass has there, every
    real token of a row counted as the row's, and the model's mode as it was."""
    plain, fused, fast = models
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    ids, lengths = batch.input_ids, batch.lengths
    real = torch.arange(ids.shape[1]) < lengths[:, None]
    fused.eval()
    got = fast.hidden_at_no_grad(ids, real, lengths - 1)
    assert not fused.training and not got.requires_grad and got.shape == (len(ids), 64)
    with torch.no_grad():
        expected = plain.eval().get_decoder()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(
        got, expected[torch.arange(len(ids)), lengths - 1], rtol=1e-4, atol=1e-4
    )
