"""The engine on a tiny model: greedy tokens equal PEFT's generate, a mixed batch equals each
request alone, eviction keeps results right, stop conditions, candidates, streaming, threads,
asyncio, cancellation and shutdown."""

import asyncio
import threading

import pytest
from lora_helpers import make_adapter_bundle, peft_greedy
from support import write_jsonl

from tunelab.serving.adapters import AdapterError
from tunelab.serving.engine import (
    Engine,
    EngineClosedError,
    GenerationRequest,
    _Detokenizer,
)
from tunelab.serving.generation import GenerationParams

QUESTIONS = [
    "hello there",
    "what colour is the sky on a clear day?",
    "x",
    "tell me a long story about cats, dogs and a very patient owl",
]


def greedy(n: int = 16) -> GenerationParams:
    return GenerationParams(temperature=0, max_output_tokens=n)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("engine-adapters")
    return [make_adapter_bundle(tiny_model_dir, root / f"a{i}", seed=10 + i) for i in range(3)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tok):
    with Engine(tiny_model_dir, tok, max_batch_size=16, max_adapters=8, batch_window_ms=50) as eng:
        yield eng


def request(prompt, adapter=None, n=16, **kw):
    adapter = None if adapter is None else (adapter.name, adapter)
    return GenerationRequest(prompt_ids=prompt, adapter=adapter, params=greedy(n), **kw)


@pytest.fixture(scope="module")
def alone(engine, prompts, bundles):
    """Each (prompt i, adapter i or base) request served on its own."""
    adapters = [*bundles, None]
    return [
        engine.generate(request(p, a), timeout=60) for p, a in zip(prompts, adapters, strict=True)
    ]


def test_greedy_tokens_equal_peft_generate(tiny_model_dir, prompts, bundles, alone):
    for i, adapter in enumerate([*bundles, None]):
        assert alone[i].token_ids[0] == peft_greedy(tiny_model_dir, adapter, prompts[i], 16)
    # adapters do change the output
    assert len({tuple(r.token_ids[0]) for r in alone}) == 4
    assert alone[0].prompt_tokens == len(prompts[0])
    assert alone[0].finish_reasons == ["length"] and alone[0].completion_tokens == 16


def test_mixed_batch_equals_each_request_alone(engine, prompts, bundles, alone):
    """Three adapters and the base model, prompts of different lengths, in one prefill."""
    prefills = engine.stats["prefills"]
    futures = [engine.submit(request(p, a)) for p, a in zip(prompts, [*bundles, None], strict=True)]
    mixed = [f.result(timeout=60) for f in futures]
    assert engine.stats["prefills"] == prefills + 1  # one batch
    assert [m.token_ids for m in mixed] == [a.token_ids for a in alone]
    assert [m.texts for m in mixed] == [a.texts for a in alone]


def test_requests_joining_a_running_batch_equal_each_alone(engine, prompts, bundles, alone):
    long = engine.stream(request(prompts[3], None, n=40))
    first = next(long)  # the long request is decoding; the others join at a step boundary
    futures = [engine.submit(request(p, a)) for p, a in zip(prompts[:3], bundles, strict=True)]
    joined = [f.result(timeout=60) for f in futures]
    rest = "".join(long)
    assert [j.token_ids for j in joined] == [a.token_ids for a in alone[:3]]
    longer = long.result.result(timeout=60)
    assert longer.token_ids[0][:16] == alone[3].token_ids[0]
    assert first + rest == longer.texts[0]


def test_eviction_under_max_adapters_keeps_results_right(
    tiny_model_dir, tok, prompts, bundles, alone
):
    with Engine(tiny_model_dir, tok, max_adapters=1, batch_window_ms=20) as small:
        order = [0, 1, 2, 0, 1]
        for i in order:
            assert (
                small.generate(request(prompts[i], bundles[i]), timeout=60).token_ids
                == alone[i].token_ids
            )
        # Concurrent requests for three adapters with room for one: each waits until the
        # adapter in use is no longer pinned, and none is evicted under a running row.
        futures = [small.submit(request(prompts[i], bundles[i])) for i in (0, 1, 2)]
        assert [f.result(timeout=60).token_ids for f in futures] == [a.token_ids for a in alone[:3]]
        assert small.adapters.evictions >= len(order) + 2
        assert len(small.adapters) == 1


def test_stop_sequences_are_trimmed(engine, prompts, bundles, alone):
    text = alone[0].texts[0]
    stop = text[10:13]
    expected = text[: text.index(stop)]
    assert expected
    req = request(prompts[0], bundles[0], stop_sequences=["never-appears", stop])
    result = engine.generate(req, timeout=60)
    assert result.texts == [expected] and result.finish_reasons == ["stop"]
    assert len(result.token_ids[0]) < 16
    deltas = list(engine.stream(req))
    assert "".join(deltas) == expected
    assert not any(stop in d for d in deltas)


def test_max_output_tokens_gives_length(engine, prompts):
    result = engine.generate(request(prompts[1], None, n=5), timeout=60)
    assert result.finish_reasons == ["length"]
    assert result.completion_tokens == 5 and len(result.token_ids[0]) == 5


def test_end_of_sequence_stops_and_is_not_in_the_text(tiny_model_dir, tok, prompts, bundles, alone):
    tokens = alone[0].token_ids[0]
    k = next(i for i in range(2, 16) if tokens[i] not in tokens[:i])
    with Engine(tiny_model_dir, tok, batch_window_ms=0) as eng:
        eng.eos_ids = frozenset({tokens[k]})  # make the k-th greedy token the end of sequence
        result = eng.generate(request(prompts[0], bundles[0]), timeout=60)
    assert result.finish_reasons == ["stop"]
    assert result.token_ids[0] == tokens[:k]
    assert result.texts[0] == tok.decode(tokens[:k], skip_special_tokens=True)
    assert result.completion_tokens == k + 1  # the end-of-sequence token was drawn


def test_candidate_count(engine, prompts, bundles, alone):
    result = engine.generate(request(prompts[0], bundles[0], candidate_count=3), timeout=60)
    assert result.token_ids == alone[0].token_ids * 3  # greedy: three times the same
    assert result.completion_tokens == 48
    sampled = GenerationRequest(
        prompt_ids=prompts[0],
        params=GenerationParams(temperature=1.0, top_k=0, top_p=1.0, max_output_tokens=8, seed=3),
        candidate_count=3,
    )
    first = engine.generate(sampled, timeout=60)
    assert len(first.texts) == 3 and first.finish_reasons == ["length"] * 3
    assert len({tuple(t) for t in first.token_ids}) > 1  # candidates differ
    assert engine.generate(sampled, timeout=60).token_ids == first.token_ids  # seeded


def test_stream_deltas_concatenate_to_the_text(engine, prompts, bundles, alone):
    stream = engine.stream(request(prompts[1], bundles[1]))
    deltas = list(stream)
    assert len(deltas) > 1
    assert "".join(deltas) == alone[1].texts[0] == stream.result.result().texts[0]


def test_incremental_decoding_never_splits_a_character(tok):
    text = "naïve café: 日本語のテキスト 🙂🚀 done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = _Detokenizer(lambda t: tok.decode(t, skip_special_tokens=True))
    deltas = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_concurrent_submissions_from_threads(engine, prompts, bundles, alone):
    adapters = [*bundles, None]
    results: dict[tuple[int, int], list] = {}

    def client(c):
        for k in range(3):
            i = (c + k) % 4
            results[c, k] = (
                engine.submit(request(prompts[i], adapters[i])).result(timeout=120).token_ids
            )

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 24
    for (c, k), ids in results.items():
        assert ids == alone[(c + k) % 4].token_ids


def test_asyncio_wrappers(engine, prompts, bundles, alone):
    async def main():
        result = await engine.agenerate(request(prompts[0], bundles[0]))
        stream = engine.astream(request(prompts[1], bundles[1]))
        text = "".join([d async for d in stream])
        # A client that goes away: cancelling the task that iterates cancels the request.
        long = engine.astream(request(prompts[3], None, n=400))

        async def consume():
            return [d async for d in long]

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return result, text, stream.result.result(), long.result

    result, text, streamed, cancelled = asyncio.run(main())
    assert result.token_ids == alone[0].token_ids
    assert text == alone[1].texts[0] == streamed.texts[0]
    assert streamed.finish_reasons == ["length"]
    assert cancelled.cancelled()
    with pytest.raises(AdapterError):  # bad requests raise before any delta
        asyncio.run(_astream_other(engine, prompts, bundles))


async def _astream_other(engine, prompts, bundles):
    other = bundles[0].parent / "not-an-adapter"
    other.mkdir(exist_ok=True)
    engine.astream(request(prompts[0], other))


def test_cancelled_requests_leave_the_batch(engine, prompts, alone):
    stream = engine.stream(request(prompts[3], None, n=200))
    next(stream)
    stream.close()
    assert stream.result.cancelled()
    future = engine.submit(request(prompts[2], None, n=200))
    future.cancel()
    # the engine goes on serving, and frees the rows
    assert engine.generate(request(prompts[3], None), timeout=60).token_ids == alone[3].token_ids
    assert not engine._rows


def test_adapter_of_another_base_model_is_refused_at_submit(
    tmp_path, engine, tiny_model_dir, prompts
):
    other = make_adapter_bundle(tiny_model_dir, tmp_path / "other", seed=0, base_model="org/other")
    with pytest.raises(AdapterError, match="tuned from base model 'org/other'"):
        engine.submit(request(prompts[0], other))
    with pytest.raises(ValueError, match="exactly one"):
        engine.submit(GenerationRequest())


def test_messages_are_rendered_as_in_training(engine, prompts, alone):
    result = engine.generate(
        GenerationRequest(messages=[{"role": "user", "content": QUESTIONS[3]}], params=greedy()),
        timeout=60,
    )
    assert result.token_ids == alone[3].token_ids


def test_close_drains_accepted_requests_then_refuses(tiny_model_dir, tok, prompts, alone):
    eng = Engine(tiny_model_dir, tok, batch_window_ms=0)
    futures = [eng.submit(request(p)) for p in prompts]
    eng.close()
    assert futures[3].result(timeout=1).token_ids == alone[3].token_ids
    assert all(f.done() for f in futures)
    with pytest.raises(EngineClosedError):
        eng.submit(request(prompts[0]))
    eng = Engine(tiny_model_dir, tok, batch_window_ms=0)
    future = eng.submit(request(prompts[3], None, n=500))
    eng.close(drain=False)
    with pytest.raises(EngineClosedError):
        future.result(timeout=1)


def test_serves_an_adapter_trained_by_tune_sft(tmp_path, tiny_model_dir, engine, prompts):
    """A bundle written by the SFT recipe is served as it is, without a restart."""
    from tunelab.configs import SFTConfig
    from tunelab.recipes.sft import train_sft

    rows = [{"input_text": f"item {i}: the red one", "output_text": "red"} for i in range(16)]
    config = SFTConfig(
        base_model=str(tiny_model_dir), train_steps=3, batch_size=8, learning_rate_multiplier=10.0
    )
    bundle = train_sft(
        config, write_jsonl(tmp_path / "train.jsonl", rows), tmp_path / "run"
    ).adapter_dir
    result = engine.generate(request(prompts[0], bundle), timeout=60)
    assert result.token_ids[0] == peft_greedy(tiny_model_dir, bundle, prompts[0], 16)
