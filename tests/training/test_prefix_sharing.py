"""A batch's shared prompt prefix computed once gives the loss and gradients of the batch
computed row by row (PEFT's own forward, no packing)."""

import copy

import pytest
import torch
from test_fused_lora import lora_model, relative_error

from tunelab.data.batching import collate
from tunelab.data.formats import parse_record
from tunelab.data.template import encode
from tunelab.losses.lm import completion_loss
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.prefix_sharing import (
    can_share_prefix,
    completion_loss_of,
    pack_shared_prefix,
    pad_rows,
    shared_prefix_length,
)

SYSTEM = "Route this support ticket to one of: billing, technical, account, shipping."


def chat_batch(tokenizer, turns, system=SYSTEM):
    """One row per (user, answer) turn; ``system`` is the rows' system message, or a list of
    one per row."""
    systems = [system] * len(turns) if isinstance(system, str) else system
    rows = []
    for (user, answer), text in zip(turns, systems, strict=True):
        messages = [{"role": "user", "content": user}, {"role": "model", "content": answer}]
        rows.append({"messages": [{"role": "system", "content": text}, *messages]})
    encoded = [encode(tokenizer, parse_record(row, i + 1), 256) for i, row in enumerate(rows)]
    return collate(encoded, tokenizer.pad_token_id)


@pytest.fixture
def batch(tokenizer):
    return chat_batch(
        tokenizer,
        [
            ("My card was charged twice.", "billing"),
            ("The app crashes when I open settings on my phone.", "technical"),
            ("Where is my parcel?", "shipping"),
        ],
    )


def peft_loss_and_grads(model, batch):
    model.train()
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    loss = completion_loss(hidden, model.get_output_embeddings(), batch.input_ids, batch.loss_mask)
    return backward(model, loss)


def shared_loss_and_grads(model, batch, row_multiple=1, share_prefix=True):
    model.train()
    return backward(model, completion_loss_of(model, batch, share_prefix, row_multiple))


def backward(model, result):
    loss, correct, count = result
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), int(correct), count, grads


def test_the_packed_batch_holds_the_prefix_once(batch):
    packed = pack_shared_prefix(batch)
    assert packed is not None
    p, (rows, length) = packed.prefix, batch.input_ids.shape
    assert p >= 20  # the chat header and the system message
    assert torch.equal(batch.input_ids[:, :p], batch.input_ids[:1, :p].expand(rows, -1))
    assert packed.input_ids.shape == (1, p + rows * (length - p))
    assert packed.position_ids[0, :p].tolist() == list(range(p))
    assert packed.position_ids[0, p : p + packed.suffix].tolist() == list(range(p, length))


def test_same_loss_and_gradients_as_the_unpacked_batch(tiny_model_dir, batch):
    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused) and can_share_prefix(fused)

    ref_loss, ref_correct, ref_count, ref_grads = peft_loss_and_grads(reference, batch)
    loss, correct, count, grads = shared_loss_and_grads(fused, batch)

    assert (correct, count) == (ref_correct, ref_count)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        assert relative_error(grads[name], ref) < 1e-5, name


def test_the_prefix_stops_before_the_first_target(tiny_model_dir, tokenizer):
    """Identical prompts with different answers share everything up to the answer: the last
    shared position predicts a target, so it must stay in every row's suffix."""
    batch = chat_batch(tokenizer, [("Colour?", "red"), ("Colour?", "a deep green")])
    first_target = int(batch.loss_mask.any(0).nonzero()[0])
    assert shared_prefix_length(batch.input_ids, batch.loss_mask) == first_target - 1

    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)
    ref_loss, *_, ref_grads = peft_loss_and_grads(reference, batch)
    loss, *_, grads = shared_loss_and_grads(fused, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        assert relative_error(grads[name], ref) < 1e-5, name


def test_batches_without_a_shared_prefix_are_left_alone(tokenizer):
    # only the template's few header tokens in common: not worth packing
    different = chat_batch(tokenizer, [("hi", "ok")] * 2, system=["first", "second"])
    assert pack_shared_prefix(different) is None
    assert pack_shared_prefix(chat_batch(tokenizer, [("only one row", "x")])) is None


def test_bf16_with_a_shared_prefix_tracks_fp32(tiny_model_dir, batch):
    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused, torch.bfloat16)
    ref_loss, *_, ref_grads = peft_loss_and_grads(reference, batch)
    loss, *_, grads = shared_loss_and_grads(fused, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    for name, ref in ref_grads.items():
        assert relative_error(grads[name], ref) < 0.05, name


@pytest.mark.parametrize("share_prefix", [True, False], ids=["packed", "unpacked"])
def test_rounding_the_token_count_changes_nothing_learnt(tiny_model_dir, batch, share_prefix):
    """Dead tokens at the end of a packed batch, or right padding of an unpacked one, round the
    matmuls' rows up to a multiple (for per-shape kernels) without moving the loss or a grad."""
    packed = pack_shared_prefix(batch, row_multiple=32)
    assert packed.tail > 0 and packed.input_ids.shape[1] % 32 == 0
    assert packed.input_ids.shape[1] == packed.packed_rows_end + packed.tail
    padded = pad_rows(batch, 32)
    assert (
        padded.input_ids.numel() % 32 == 0 and padded.input_ids.shape[1] > batch.input_ids.shape[1]
    )
    assert not padded.loss_mask[:, batch.input_ids.shape[1] :].any()

    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)
    ref_loss, ref_correct, ref_count, ref_grads = peft_loss_and_grads(reference, batch)
    loss, correct, count, grads = shared_loss_and_grads(fused, batch, 32, share_prefix)
    assert (correct, count) == (ref_correct, ref_count)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        assert relative_error(grads[name], ref) < 1e-5, name
