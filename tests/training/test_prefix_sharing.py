"""A batch packed as its prefix tree (the tokens rows share computed once, no padding) gives
the loss and gradients of the batch computed row by row (PEFT's own forward, no packing)."""

import copy

import pytest
import torch
from test_fused_lora import lora_model, relative_error

from tunelab.data.batching import Batch, collate
from tunelab.data.formats import parse_record
from tunelab.data.preference import collate_pairs, load_preference
from tunelab.data.template import encode
from tunelab.losses.lm import completion_loss
from tunelab.training import prefix_sharing
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.prefix_sharing import (
    attention_groups,
    can_share_prefix,
    completion_loss_of,
    decoder_hidden,
    decoder_hidden_at,
    pack_shared_prefix,
    pad_rows,
    row_lengths,
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


def assert_rows_map_back(batch, packed):
    """Every row's token p + t, up to its last target, is at row_positions[b, t] in the packed
    sequence, with its own position id."""
    p = packed.prefix
    for b, n in enumerate(row_lengths(batch.loss_mask)):
        where = packed.row_positions[b, : n - p]
        assert packed.input_ids[0, where].tolist() == batch.input_ids[b, p:n].tolist()
        assert packed.position_ids[0, where].tolist() == list(range(p, n))


def distinct_prefixes(batch) -> int:
    """Tokens of the rows' full prefix tree: one per distinct (row prefix) up to a last target."""
    ids = batch.input_ids.tolist()
    lengths = row_lengths(batch.loss_mask)
    return len({tuple(row[: t + 1]) for row, n in zip(ids, lengths, strict=True) for t in range(n)})


def test_the_packed_batch_holds_the_prefix_once(batch):
    packed = pack_shared_prefix(batch)
    assert packed is not None
    p, (rows, length) = packed.prefix, batch.input_ids.shape
    assert p >= 20  # the chat header and the system message
    assert torch.equal(batch.input_ids[:, :p], batch.input_ids[:1, :p].expand(rows, -1))
    assert packed.input_ids[0, :p].tolist() == batch.input_ids[0, :p].tolist()
    assert packed.position_ids[0, :p].tolist() == list(range(p))
    # the prefix once, then each row's own tokens, none of the padding
    ends = row_lengths(batch.loss_mask)
    assert packed.tokens == p + sum(int(n) - p for n in ends) < rows * length
    assert packed.input_ids.shape == (1, packed.tokens)
    assert_rows_map_back(batch, packed)


def test_pairs_share_their_prompt_and_the_start_of_their_answers(tmp_path, tokenizer):
    """Preference pairs: the chosen and rejected answers follow one prompt and here begin alike
    ("It is 3." / "It is 3. Well, ..."): all of that is computed once."""
    from support import preference_rows, write_jsonl

    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    pairs, _ = load_preference(
        path, tokenizer, prompt_sequence_length=64, target_sequence_length=24
    )
    pair_batch = collate_pairs(pairs, tokenizer.pad_token_id)
    batch = Batch(pair_batch.input_ids, pair_batch.response_mask, tokens=0)
    packed = pack_shared_prefix(batch, minimum=1)
    assert packed.tokens == distinct_prefixes(batch)  # every shared run once
    assert_rows_map_back(batch, packed)
    # beyond the prefix all rows share: each pair's question and "It is i." once, not twice
    unshared = packed.prefix + sum(int(n) - packed.prefix for n in row_lengths(batch.loss_mask))
    assert packed.tokens <= unshared - 10 * len(pairs)


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
    assert packed.input_ids.shape[1] == packed.tokens + packed.tail
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


def test_a_deep_tree_with_repeated_rows_gives_the_rows_loss_and_gradients(
    tiny_model_dir, tokenizer, monkeypatch
):
    """Answers nested in one another (each one the start of the next), a row repeated, and a
    second prompt: a tree several levels deep, every shared run computed once."""
    monkeypatch.setattr(prefix_sharing, "MIN_SHARED_TOKENS", 1)  # share every run
    batch = chat_batch(
        tokenizer,
        [
            ("Colour?", "red"),
            ("Colour?", "red and green"),
            ("Colour?", "red and green and blue, all three"),
            ("Colour?", "red"),
            ("Size?", "big"),
        ],
    )
    packed = pack_shared_prefix(batch, minimum=1)
    assert packed.segments > 6  # root, the two prompts, the nested answers, the rows' own ends
    assert packed.tokens == distinct_prefixes(batch) + 1  # the repeated row's last token twice
    assert_rows_map_back(batch, packed)

    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)
    ref_loss, ref_correct, ref_count, ref_grads = peft_loss_and_grads(reference, batch)
    loss, correct, count, grads = shared_loss_and_grads(fused, batch, row_multiple=32)
    assert (correct, count) == (ref_correct, ref_count)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        assert relative_error(grads[name], ref) < 1e-5, name


def test_segments_are_attended_in_groups_of_similar_shape():
    """A preference batch's segments come in a few shapes (header, prompts, one-token forks,
    answers): grouped, each padded only to its own, far fewer cells are computed than with
    every segment padded to the longest."""
    queries = [25, 2, 19, 1, 25, 17, 1, 26, 17, 1, 26, 17, 1, 26, 20, 1, 22, 19, 1, 27]
    keys = [25, 27, 46, 47, 71, 44, 45, 70, 44, 45, 70, 44, 45, 70, 47, 48, 69, 44, 45, 71]

    def cells(groups):
        return sum(len(g) * max(queries[i] for i in g) * max(keys[i] for i in g) for g in groups)

    groups = attention_groups(queries, keys, call_cells=1024, max_groups=4)
    assert sorted(i for g in groups for i in g) == list(range(len(queries)))
    assert 2 <= len(groups) <= 4
    one = [list(range(len(queries)))]
    assert cells(groups) + 1024 * len(groups) < cells(one) + 1024
    assert cells(groups) < 0.6 * cells(one)
    assert attention_groups(queries, keys, max_groups=1) == [
        sorted(one[0], key=lambda i: (queries[i], keys[i]))
    ]
    # a call costing more than any saving: one group
    assert len(attention_groups(queries, keys, call_cells=10**9)) == 1
    assert attention_groups([3], [5]) == [[0]]


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_attention_gives_the_rows_loss_and_gradients(
    tiny_model_dir, tokenizer, monkeypatch, precision
):
    """Free calls: every segment shape its own group (up to the limit); the loss and gradients
    stay those of the single-group packing and of the unpacked batch."""
    batch = chat_batch(
        tokenizer,
        [
            ("Colour?", "red"),
            ("Colour?", "red and green and blue, all three"),
            ("Which size would fit a small dog best?", "big"),
            ("Which size would fit a small dog best?", "the small one, surely"),
        ],
    )
    monkeypatch.setattr(prefix_sharing, "ATTENTION_CALL_CELLS", 0)
    packed = pack_shared_prefix(batch, minimum=1)
    assert len(packed.groups) > 1
    assert sum(g.segments for g in packed.groups) == packed.segments
    assert_rows_map_back(batch, packed)

    reference = lora_model(tiny_model_dir)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused, precision)
    monkeypatch.setattr(prefix_sharing, "MIN_SHARED_TOKENS", 1)
    loss, correct, count, grads = shared_loss_and_grads(fused, batch)
    monkeypatch.setattr(prefix_sharing, "ATTENTION_CALL_CELLS", 10**9)  # one group
    assert len(pack_shared_prefix(batch, minimum=1).groups) == 1
    one_loss, one_correct, one_count, one_grads = shared_loss_and_grads(fused, batch)
    ref_loss, ref_correct, ref_count, ref_grads = peft_loss_and_grads(reference, batch)

    assert (correct, count) == (one_correct, one_count) == (ref_correct, ref_count)
    assert loss == pytest.approx(one_loss, rel=1e-6)
    tolerance = 1e-5 if precision == torch.float32 else 0.05
    assert loss == pytest.approx(ref_loss, rel=tolerance if precision == torch.float32 else 1e-2)
    for name, ref in ref_grads.items():
        assert relative_error(grads[name], one_grads[name]) < 1e-5, name
        assert relative_error(grads[name], ref) < tolerance, name


def last_targets(batch):
    return torch.as_tensor(row_lengths(batch.loss_mask)) - 1


@pytest.mark.parametrize("share_prefix", [True, False], ids=["packed", "unpacked"])
def test_hidden_at_gives_the_states_and_gradients_read_from_every_token(
    tiny_model_dir, batch, share_prefix
):
    """A reward model reads one final hidden state a row: computing the last layer for those
    tokens only gives the same states and gradients as computing every token and picking."""
    reference = lora_model(tiny_model_dir)
    with torch.no_grad():  # B at zero would leave the adapter out of the comparison
        for name, param in reference.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    fused = copy.deepcopy(reference)
    assert fuse_lora_for_training(fused)
    fused.train()
    at = last_targets(batch) - torch.tensor([0, 2, 1])  # not only the rows' last tokens
    weight = torch.randn(fused.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def states_and_grads(states):
        (states @ weight).square().sum().backward()
        grads = {n: p.grad.clone() for n, p in fused.named_parameters() if p.requires_grad}
        fused.zero_grad(set_to_none=True)
        return states.detach(), grads

    hidden, p = decoder_hidden(fused, batch.input_ids, batch.loss_mask, share_prefix)
    assert p > 0 if share_prefix else p == 0
    ref_states, ref_grads = states_and_grads(hidden[torch.arange(len(at)), at - p])
    mlp_rows = []
    last = fused.get_decoder().layers[-1].mlp
    handle = last.register_forward_pre_hook(lambda _m, args: mlp_rows.append(args[0].shape[1]))
    states, grads = states_and_grads(
        decoder_hidden_at(fused, batch.input_ids, batch.loss_mask, at, share_prefix)
    )
    handle.remove()

    assert states.shape == (len(at), fused.config.hidden_size)
    assert relative_error(states, ref_states) < 1e-5
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        assert relative_error(grads[name], ref) < 1e-5, name
    if share_prefix:  # the last layer's MLP saw the kept tokens only
        assert mlp_rows == [len(at)]


def test_hidden_at_refuses_a_token_past_its_rows_last_target(batch):
    at = last_targets(batch)
    assert pack_shared_prefix(batch, at=at).keep.positions.shape == (len(at),)
    with pytest.raises(ValueError, match="at or before its row's last training target"):
        pack_shared_prefix(batch, at=at + torch.tensor([0, 1, 0]))
