"""Where the reward-model, DPO and RLOO training steps spend their time on this CPU: the real
recipes (tunelab.recipes.reward_model, .dpo, .rlhf) run for a few steps, with the time of each
phase of a step summed, and the ops of a window of steps under torch.profiler.

    python bench/profile_rlhf_step.py [--only reward dpo rl] [--steps 8] [--profile-steps 3] \
        [--batch-size 8] [--prompts-per-step 4] [--samples-per-prompt 4] [--target-length 32] \
        [--precision auto] [--threads N]

On a busy machine, ``--threads 1 --profile-steps 0`` and the CPU seconds per step are the
steadier measure (a parallel region waits for its slowest thread, however busy its core).

Phases (summed over the steps after the first, which pays one-off kernel choices):
- ``forward``: the fast path's training forward (FastPath.hidden), packing included;
- ``no-grad forward``: its passes without a graph (FastPath.hidden_no_grad: RL's reward scores
  and reference; DPO's reference pass is timed apart, below);
- ``backward+step``: TrainingRun.backward_and_step (backward, clipping, fused AdamW);
- RL only: ``rollout`` (sampling the answers), ``rollout merge`` (refreshing the merged bf16
  copy the rollouts decode, tunelab.training.sampling_policy) and ``logprobs``, the answers'
  log-probabilities from the hidden states (the output head over the vocabulary, for the
  reference and the policy; its backward is in ``backward+step``), each inside the step; the
  rest of a step (collation, adapter switches, the loss) is the step's CPU seconds minus the
  phases;
- DPO only: ``reference pass``, the reference log-probabilities computed once before step 0.
Also printed: the tokens of the batches as collated (padding included) against the tokens the
linear layers computed (after packing), which is what prefix sharing and packing save.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "preference"


class Phases:
    """Seconds and calls per phase, counted from the second step on."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.step_cpu: list[float] = []
        """CPU seconds of this process per step (from the second step on)."""
        self.calls: dict[str, int] = defaultdict(int)
        self.tokens = {"collated": 0, "computed": 0}
        self.step = 0
        self.counting = False
        self.no_grad = False

    @contextmanager
    def phase(self, name: str):
        start, cpu = time.perf_counter(), time.process_time()
        with record_function(name):
            yield
        if self.counting or name == "reference pass":
            self.seconds[name] += time.perf_counter() - start
            self.cpu[name] += time.process_time() - cpu
            self.calls[name] += 1


CURRENT = [Phases()]
"""The phases of the recipe running now: the timers are installed once per process."""


def wrap(owner, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        with CURRENT[0].phase(name):
            return original(*args, **kwargs)

    setattr(owner, attr, wrapped)


def instrument() -> None:
    """Phase timers around the library calls the recipes make (names as the recipes import
    them), and a count of the tokens each training forward computes."""
    from tunelab.recipes import dpo, rlhf
    from tunelab.training import fast_path, run

    original_hidden = fast_path.FastPath.hidden

    def hidden(self, input_ids, loss_mask):
        phases = CURRENT[0]
        if phases.no_grad:  # inside hidden_no_grad: timed as its own phase
            return original_hidden(self, input_ids, loss_mask)
        with phases.phase("forward"):
            out = original_hidden(self, input_ids, loss_mask)
        if phases.counting:
            phases.tokens["collated"] += input_ids.numel()
            phases.tokens["computed"] += last_decoder_tokens[0]
        return out

    fast_path.FastPath.hidden = hidden
    original_no_grad = fast_path.FastPath.hidden_no_grad

    def hidden_no_grad(self, input_ids, loss_mask):
        phases = CURRENT[0]
        phases.no_grad = True
        try:
            with phases.phase("no-grad forward"):
                return original_no_grad(self, input_ids, loss_mask)
        finally:
            phases.no_grad = False

    fast_path.FastPath.hidden_no_grad = hidden_no_grad
    wrap(rlhf, "sequence_logprobs", "logprobs")
    wrap(run.TrainingRun, "backward_and_step", "backward+step")
    wrap(rlhf, "sample_answers", "rollout")
    try:  # the rollouts' merged bf16 copy of the policy, refreshed before each step's rollouts
        from tunelab.training import sampling_policy

        wrap(sampling_policy.SamplingPolicy, "current", "rollout merge")
    except ImportError:  # a checkout from before it (profiled side by side with this one)
        pass
    wrap(dpo, "answer_logprobs", "reference pass")

    last_decoder_tokens = [0]
    from transformers.models.llama import modeling_llama

    original_forward = modeling_llama.LlamaModel.forward

    def decoder_forward(self, input_ids=None, **kwargs):
        if input_ids is not None:
            last_decoder_tokens[0] = input_ids.numel()
        return original_forward(self, input_ids=input_ids, **kwargs)

    modeling_llama.LlamaModel.forward = decoder_forward


def run_recipe(name: str, args, work: Path, reward_model: Path | None) -> Path | None:
    from tunelab.configs.dpo import DPOConfig
    from tunelab.configs.rlhf import RLHFConfig

    phases = CURRENT[0] = Phases()
    rlhf = RLHFConfig(
        reward_model_train_steps=args.steps,
        reinforcement_learning_train_steps=args.steps,
        reward_model_batch_size=args.batch_size,
        prompts_per_step=args.prompts_per_step,
        samples_per_prompt=args.samples_per_prompt,
        target_sequence_length=args.target_length,
        reward_model_eval_fraction=0.0,
        precision=args.precision,
    )
    prof = profile(activities=[ProfilerActivity.CPU])
    window = (args.steps - args.profile_steps, args.steps)

    last_cpu = [0.0]

    def on_progress(p) -> None:
        if p.phase != "training":
            return
        now = time.process_time()
        if phases.counting:
            phases.step_cpu.append(now - last_cpu[0])
        last_cpu[0] = now
        phases.step = p.step
        phases.counting = p.step >= 1
        if args.profile_steps and p.step == window[0]:
            prof.start()
        elif args.profile_steps and p.step == window[1]:
            prof.stop()

    start = time.perf_counter()
    if name == "reward":
        from tunelab.recipes import reward_model as recipe

        result = recipe.train_reward_model(
            rlhf.reward_model(),
            EXAMPLES / "preference.jsonl",
            work / "rm",
            on_progress=on_progress,
        )
        out = result.bundle_dir
    elif name == "dpo":
        from tunelab.recipes import dpo as recipe

        config = DPOConfig(
            train_steps=args.steps,
            batch_size=args.batch_size,
            target_sequence_length=args.target_length,
            precision=args.precision,
        )
        result = recipe.train_dpo(
            config, EXAMPLES / "preference.jsonl", work / "dpo", on_progress=on_progress
        )
        out = None
    else:
        from tunelab.recipes import rlhf as recipe

        result = recipe.train_policy(
            rlhf, EXAMPLES / "prompts.jsonl", reward_model, work / "rl", on_progress=on_progress
        )
        out = None
    wall = time.perf_counter() - start
    counted = args.steps - 1
    run_dir = work / {"reward": "rm", "dpo": "dpo", "rl": "rl"}[name]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_seconds = sum(r["step_seconds"] for r in rows if "step_seconds" in r and r["step"] > 1)
    print(f"\n=== {name}: {args.steps} steps, wall {wall:.1f} s, train {result.usage}")
    print(
        f"steps 2..{args.steps}: {step_seconds:.2f} s ({step_seconds / counted:.3f} s a step); "
        f"first step {rows[0]['step_seconds']:.2f} s; phases summed over the same steps:"
    )
    for phase, seconds in sorted(phases.seconds.items(), key=lambda kv: -kv[1]):
        per = seconds / counted if phase != "reference pass" else seconds
        print(
            f"  {phase:<16}{seconds:8.2f} s  ({per:.3f} s a step; {phases.calls[phase]} calls), "
            f"CPU {phases.cpu[phase]:.2f} s"
        )
    cpu = sum(phases.step_cpu)
    print(
        f"CPU seconds of this process in steps 2..{args.steps}: {cpu:.2f} ({cpu / counted:.3f} a step)"
    )
    collated, computed = phases.tokens["collated"], phases.tokens["computed"]
    if collated:
        print(
            f"training forward tokens: {collated} collated (padding included), {computed} "
            f"computed after packing ({computed / collated:.0%})"
        )
    if args.profile_steps:
        ops = prof.key_averages()
        print(f"ops of steps {window[0] + 1}..{window[1]}, by self CPU time:")
        print(ops.table(sort_by="self_cpu_time_total", row_limit=20))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=["reward", "dpo", "rl"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--target-length", type=int, default=32)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--threads", type=int, help="torch threads (1: CPU seconds that a busy machine moves less)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.only or ["reward", "dpo", "rl"]
    instrument()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reward_model = None
        if "reward" in runs or "rl" in runs:
            reward_model = run_recipe("reward", args, work, None)
        for name in ("dpo", "rl"):
            if name in runs:
                run_recipe(name, args, work, reward_model)


if __name__ == "__main__":
    main()
