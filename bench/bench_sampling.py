"""Choosing the next tokens of a batch: the serving sampler against filtering each row whole.

    python bench/bench_sampling.py [--vocab 49152] [--rounds 20] [--threads 1]

``sample_batch`` (``tunelab/serving/sampling.py``) finds a row's top-k / top-p tokens with one
batched ``topk``; the peer here is the straightforward sampler it replaced: per row,
``filter_logits`` over the whole vocabulary (a sort for top-p), a softmax and a float64 CDF.
Both draw the same tokens for the same seeds (``tests/serving/test_sampling.py``); this prints
the CPU time per batch of each (``time.thread_time``, best of ``--rounds`` repeats, the two run
alternately), for 1 and 16 rows over SmolLM2's vocabulary, with the API's default sampling
(temperature 0.2, top-k 40, top-p 0.8) and others. Logits: the default model's own, for a few
steps of a story, so that the top-p nucleus has a real size (random logits make it thousands
of tokens wide); ``--random`` uses N(0, 3) logits instead.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunelab.serving.sampling import RowSampling, filter_logits, make_generator, sample_batch  # noqa: E402

SETTINGS = {
    "defaults (T 0.2, k 40, p 0.8)": RowSampling(0.2, 40, 0.8),
    "T 0.7, p 0.95": RowSampling(0.7, 0, 0.95),
    "T 1.0, p 0.95": RowSampling(1.0, 0, 0.95),
    "T 1.0, k 50": RowSampling(1.0, 50, 1.0),
    "T 1.0 (RL rollouts)": RowSampling(1.0, 0, 1.0),
}


def whole_rows(logits, params, generators):
    """The peer: each row filtered over the whole vocabulary, then an inverse-CDF draw."""
    out = []
    for x, p, g in zip(logits, params, generators, strict=True):
        scaled = filter_logits(x.float() / p.temperature, p.top_k, p.top_p)
        cdf = torch.softmax(scaled, dim=-1).double().cumsum(-1)
        u = torch.rand(1, generator=g, dtype=torch.float64)
        out.append(int(torch.searchsorted(cdf, u * cdf[-1:], right=True).clamp(max=len(x) - 1)))
    return out


def model_logits(rows: int) -> torch.Tensor:
    """``rows`` next-token logits of the default model along a sampled story."""
    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model

    ref = resolve_model("smollm2-135m-instruct")
    tokenizer, model = load_tokenizer(ref.path), load_causal_lm(ref.path).eval()
    chat = [{"role": "user", "content": "Write a short story about a dragon who learns to cook."}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=rows, do_sample=True, temperature=1.0)
        return model(out).logits[0, ids.shape[1] - 1 : -1][:rows].float()


def best_ms(fn, logits, params, seeds, rounds) -> float:
    best = float("inf")
    for _ in range(rounds):
        gens = [make_generator(s) for s in seeds]
        start = time.thread_time()
        fn(logits, params, gens)
        best = min(best, time.thread_time() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random", action="store_true", help="N(0, 3) logits, not the model's")
    parser.add_argument("--vocab", type=int, default=49152, help="with --random")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu}, torch {torch.__version__}, "
        f"{args.threads} thread(s), best of {args.rounds}"
    )
    pool = torch.randn(16, args.vocab) * 3 if args.random else model_logits(16)
    print(
        f"logits: {'N(0, 3)' if args.random else 'the default model, 16 steps of a story'}, "
        f"vocabulary {pool.shape[1]}\n"
    )
    print(f"{'sampling':<32}{'rows':>5}{'whole rows ms':>15}{'batched ms':>12}{'speed-up':>10}")
    for name, p in SETTINGS.items():
        for rows in (1, 16):
            logits, params, seeds = pool[:rows], [p] * rows, list(range(rows))
            peer = best_ms(whole_rows, logits, params, seeds, 1)  # warm-up
            ours = best_ms(sample_batch, logits, params, seeds, 1)
            peer = best_ms(whole_rows, logits, params, seeds, args.rounds)
            ours = best_ms(sample_batch, logits, params, seeds, args.rounds)
            print(f"{name:<32}{rows:>5}{peer:>15.2f}{ours:>12.2f}{peer / ours:>9.1f}x")


if __name__ == "__main__":
    main()
