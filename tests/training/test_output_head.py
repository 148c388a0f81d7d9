"""The bf16 output head (tunelab.training.output_head) gives the log-probabilities and gradients
of the fp32 head with bf16-rounded weights, much closer than plain bf16 logits do; a bf16 run's
fast path hands it out and an fp32 run's keeps the fp32 head."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fast_path_losses import lora_model

from tunelab.data.batching import collate
from tunelab.data.preference import sequence
from tunelab.losses.rl import sequence_logprobs
from tunelab.training.fast_path import FastPath
from tunelab.training.output_head import Bf16OutputHead

VOCAB, WIDTH, ROWS = 4096, 128, 90  # rows: not a multiple of the 32 the matmul pads to


def head_and_states(scale: float = 1.0):
    """A frozen head and bf16 hidden states with a few outlier channels, as LLMs' have, and
    targets drawn from the head's own distribution, as RL samples them."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 0.25, generator=gen)
    head.weight.requires_grad_(False)
    hidden = torch.randn(ROWS, WIDTH, generator=gen) * scale
    hidden[:, :3] *= 12  # outlier channels: large logits, the case bf16 logits get wrong
    hidden = hidden.bfloat16().float()
    with torch.no_grad():
        probs = torch.softmax(head(hidden), -1)
    targets = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return head, hidden, targets


def reference(head, hidden, targets, weight=None):
    """fp32 log-probabilities, with ``weight`` instead of the head's if given."""
    logits = F.linear(hidden, head.weight if weight is None else weight)
    return -F.cross_entropy(logits, targets, reduction="none")


def test_logprobs_are_the_rounded_weights_fp32_ones_and_beat_plain_bf16():
    head, hidden, targets = head_and_states()
    rounded = head.weight.bfloat16().float()
    got = Bf16OutputHead(head).target_logprobs(hidden, targets)
    assert got.dtype == torch.float32
    expected = reference(head, hidden, targets, rounded)
    assert expected.abs().mean() > 1.0, "targets the head finds certain would test nothing"
    plain_bf16 = -F.cross_entropy(
        F.linear(hidden.bfloat16(), head.weight.bfloat16()).float(), targets, reduction="none"
    )
    error, plain_error = (got - expected).abs(), (plain_bf16 - expected).abs()
    assert error.max() < 0.02
    assert error.mean() < plain_error.mean() / 4
    # No bias to add up over an answer: the summed error stays near one token's.
    assert abs((got - expected).sum()) < 0.05
    # And the fp32 weights themselves are not far: bf16 rounds the head as the forward does.
    assert (got - reference(head, hidden, targets)).abs().max() < 0.1


def test_gradient_is_the_fp32_gradient_up_to_bf16():
    head, hidden, targets = head_and_states()
    weights = torch.linspace(-1.0, 2.0, ROWS)  # as advantages weigh an RLOO loss's terms
    x = hidden.clone().requires_grad_(True)
    (Bf16OutputHead(head).target_logprobs(x, targets) * weights).sum().backward()
    y = hidden.clone().requires_grad_(True)
    (reference(head, y, targets) * weights).sum().backward()
    assert x.grad.dtype == torch.float32
    assert (x.grad - y.grad).norm() / y.grad.norm() < 0.02


def test_a_target_below_bf16s_range_still_gets_its_logprob():
    """A target ~200 nats below the best token: its probability is 0 in bf16, so it is read
    from the logits instead of coming back as -inf."""
    head, hidden, targets = head_and_states()
    hidden, targets = hidden[:4].clone(), targets[:4].clone()
    with torch.no_grad():
        logits = head(hidden)
    targets[0] = logits[0].argmin()
    hidden[0] *= 200 / (logits[0].max() - logits[0].min())
    hidden = hidden.bfloat16().float()
    got = Bf16OutputHead(head).target_logprobs(hidden, targets)
    expected = reference(head, hidden, targets, head.weight.bfloat16().float())
    assert expected[0] < -150
    assert torch.isfinite(got).all()
    assert got[0] == pytest.approx(expected[0].item(), rel=0.01)


def test_refuses_a_trained_head_or_one_with_bias():
    with pytest.raises(ValueError, match="frozen head without bias"):
        Bf16OutputHead(torch.nn.Linear(8, 16, bias=False))  # trainable
    head = torch.nn.Linear(8, 16).requires_grad_(False)
    with pytest.raises(ValueError, match="frozen head without bias"):
        Bf16OutputHead(head)


def test_the_weight_copy_is_made_once_and_again_when_the_head_changes():
    head, hidden, targets = head_and_states()
    out = Bf16OutputHead(head)
    first = out.weights()[0]
    assert out.weights()[0] is first
    with torch.no_grad():
        head.weight.mul_(2)
    assert out.weights()[0] is not first
    got = out.target_logprobs(hidden, targets)
    expected = reference(head, hidden, targets, head.weight.bfloat16().float())
    assert (got - expected).abs().max() < 0.05


def test_fast_path_hands_the_bf16_head_out_only_in_bf16(tiny_model_dir, tokenizer):
    """Sequence log-probabilities of an RLOO-shaped batch through each run's head: the bf16
    run's bf16 head gives its fp32 head's numbers to bf16 accuracy."""
    model = lora_model(tiny_model_dir)
    fp32 = FastPath.install(copy.deepcopy(model), "fp32")
    bf16 = FastPath.install(model, "bf16")
    assert fp32.output_head() is fp32.model.get_output_embeddings()
    head = bf16.output_head()
    assert isinstance(head, Bf16OutputHead) and bf16.output_head() is head
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three rivers."}],
        add_generation_prompt=True,
        return_dict=False,
    )
    prompt = np.asarray(prompt, dtype=np.int64)
    gen = torch.Generator().manual_seed(0)
    answers = [torch.randint(100, 5000, (n,), generator=gen).numpy() for n in (9, 14, 20, 5)]
    batch = collate([sequence(prompt, a) for a in answers], tokenizer.pad_token_id)
    with torch.no_grad():
        hidden, p = bf16.hidden_no_grad(batch.input_ids, batch.loss_mask)
        ids, mask = batch.input_ids[:, p:], batch.loss_mask[:, p:]
        got = sequence_logprobs(hidden, head, ids, mask)
        expected = sequence_logprobs(hidden, model.get_output_embeddings(), ids, mask)
    assert p > 0
    assert (got - expected).abs().max() < 0.02 * mask.sum(1).max()
