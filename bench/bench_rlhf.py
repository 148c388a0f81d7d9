"""The RLHF and DPO stages against TRL's trainers, on the same model, data, steps and CPU.

    python bench/bench_rlhf.py [--reward-steps 20] [--rl-steps 10] [--dpo-steps 20] \
        [--batch-size 8] [--prompts-per-step 4] [--samples-per-prompt 4] [--target-length 32] \
        [--only RUN ...] [--threads N] [--rounds N]

Up to nine runs, one after the other, each in a fresh subprocess (so that peak RSS is its own):

- ``reward/tunelab``  tunelab.recipes.reward_model.train_reward_model (LoRA + scalar head);
- ``reward/trl``      trl.RewardTrainer on AutoModelForSequenceClassification + PEFT LoRA;
- ``rl/tunelab``      tunelab.recipes.rlhf.train_policy (RLOO; policy, reward model and
                      reference share one copy of the base weights);
- ``rl/trl``          trl.RLOOTrainer with PEFT LoRA (reference = adapter disabled) and, as its
                      reward function, the reward model of ``reward/tunelab`` exported as a
                      sequence-classification model (TRL loads a reward model as its own model);
- ``dpo/tunelab``     tunelab.recipes.dpo.train_dpo (reference log-probs computed once);
- ``dpo/trl``         trl.DPOTrainer with PEFT LoRA (reference = adapter disabled), its defaults;
- ``*/trl-bf16``      each TRL run again with TRL's bf16 default kept: only on a CPU with native
                      bf16 (AVX512-BF16 or AMX), where it may be TRL's faster setting. Each
                      stage's ratio is taken against the faster of its TRL runs.

Same for both sides of a stage: base model (SmolLM2-135M-Instruct), the pairs and prompts of
``examples/preference/``, LoRA rank/alpha/targets with no dropout, batch size, steps, learning
rate with linear warm-up and decay, AdamW without weight decay, clipping at 1.0, seed, sequence
limits; RL: prompts per step, samples per prompt, KL coefficient 0.1, temperature 1, no top-k/p.
TRL runs with its defaults otherwise (activation checkpointing as it sets it), except
``bf16=False`` in the ``*/trl`` runs (bf16 is emulated on a CPU without native bf16, ~30x
slower than fp32; ``*/trl-bf16`` keeps it where it is native), and ``save_strategy="no"``
(no checkpoints, which favours TRL: ours write theirs every 10 steps).

Measured per run: wall seconds of the whole run (model loading and data preparation included),
its CPU seconds (all threads; with ``--threads 1`` the work each side does, which a busy machine
disturbs less than wall time), seconds inside the training steps (for our DPO, plus the one pass computing the reference
log-probabilities, which TRL does inside its steps), and peak RSS. Each run also prints what
it learned (the final train loss; RL: mean reward-model score of the last steps), to show that
both sides did the same job. On a shared machine trust the ratios more than the absolute numbers; ``others``
is the share of the cores other processes used while the run ran. ``--rounds N`` runs the
selected runs N times in turn, and gives each stage's ratio per round and their median: on a
shared host the same run's time moved by up to 35% within twenty minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

EXAMPLES = ROOT / "examples" / "preference"
RUNS = [
    "reward/tunelab",
    "reward/trl",
    "reward/trl-bf16",
    "rl/tunelab",
    "rl/trl",
    "rl/trl-bf16",
    "dpo/tunelab",
    "dpo/trl",
    "dpo/trl-bf16",
]
TRL_BF16 = False
"""Whether this worker runs TRL with ``bf16=True`` (the ``*/trl-bf16`` runs)."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rlhf_config(args):
    from tunelab.configs.rlhf import RLHFConfig

    return RLHFConfig(
        base_model=args.base,
        reward_model_train_steps=args.reward_steps,
        reinforcement_learning_train_steps=args.rl_steps,
        reward_model_batch_size=args.batch_size,
        prompts_per_step=args.prompts_per_step,
        samples_per_prompt=args.samples_per_prompt,
        target_sequence_length=args.target_length,
        reward_model_eval_fraction=0.0,  # TRL's run evaluates nothing either
    )


def dpo_config(args):
    from tunelab.configs.dpo import DPOConfig

    return DPOConfig(
        base_model=args.base,
        train_steps=args.dpo_steps,
        batch_size=args.batch_size,
        target_sequence_length=args.target_length,
    )


def warmup_steps(ratio: float, steps: int) -> int:
    return max(1, int(ratio * steps)) if ratio else 0  # TuneLab's rule, given to TRL as a count


def lora(rank: int, alpha: int, task: str):
    from peft import LoraConfig

    from tunelab.training.lora import LORA_TARGETS

    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type=task
    )


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def trl_args(cls, tmp: str, steps: int, lr: float, warmup: int, batch: int, seed: int, **kw):
    return cls(
        output_dir=tmp,
        use_cpu=True,  # without it, TRL's default bf16=True refuses to start on a CPU
        # and with it, bf16 autocast runs emulated on a CPU without native bf16 (no
        # AVX512-BF16/AMX): ~150 s a step of SFT (bench_sft.py's trl-defaults run). There fp32
        # is TRL's faster setting; with native bf16 the */trl-bf16 runs keep its bf16 default.
        bf16=TRL_BF16,
        report_to="none",
        save_strategy="no",
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=warmup,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=seed,
        logging_steps=1,
        **kw,
    )


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds inside the optimizer steps, and the losses/rewards TRL logs."""

        seconds, started, logs = 0.0, 0.0, []

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds += time.perf_counter() - self.started

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs:
                self.logs.append(dict(logs))

    return StepTimer()


def pairs_rows(path: Path, limit: int) -> list[dict]:
    """The preference pairs as TRL's conversational chosen/rejected records."""
    rows = []
    for line in path.read_text().splitlines()[:limit]:
        r = json.loads(line)
        prompt = (
            r["messages"] if "messages" in r else [{"role": "user", "content": r["input_text"]}]
        )
        chosen, rejected = r[f"candidate_{r['choice']}"], r[f"candidate_{1 - r['choice']}"]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


# ------------------------------------------------------------------------- the runs
def reward_tunelab(args) -> dict:
    from tunelab.recipes.reward_model import train_reward_model

    result = train_reward_model(
        rlhf_config(args).reward_model(), EXAMPLES / "preference.jsonl", Path(args.work) / "rm"
    )
    return {"train_seconds": result.usage["train_seconds"], "final_loss": result.final_train_loss}


def reward_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tunelab.models import load_tokenizer, resolve_model

    config = rlhf_config(args).reward_model()
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    model_config = AutoConfig.from_pretrained(base.path, num_labels=1)
    model_config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(
        base.path, config=model_config, use_safetensors=True
    )
    timer = step_timer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RewardTrainer(
            model=model,
            processing_class=tokenizer,
            args=trl_args(
                RewardConfig,
                tmp,
                config.train_steps,
                config.learning_rate,
                warmup_steps(config.warmup_ratio, config.train_steps),
                config.batch_size,
                config.seed,
                max_length=config.prompt_sequence_length + config.target_sequence_length,
            ),
            train_dataset=Dataset.from_list(
                pairs_rows(EXAMPLES / "preference.jsonl", config.batch_size * config.train_steps)
            ),
            peft_config=lora(config.adapter_size, config.lora_alpha, "SEQ_CLS"),
            callbacks=[timer],
        )
        trainer.train()
    losses = [x["loss"] for x in timer.logs if "loss" in x]
    return {"train_seconds": timer.seconds, "final_loss": losses[-1] if losses else None}


def rl_tunelab(args) -> dict:
    from tunelab.recipes.rlhf import train_policy

    result = train_policy(
        rlhf_config(args),
        EXAMPLES / "prompts.jsonl",
        Path(args.reward_model),
        Path(args.work) / "rl",
    )
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_seconds": result.usage["train_seconds"],
        "final_reward": sum(r["reward"] for r in rows[-3:]) / len(rows[-3:]),
        "first_reward": sum(r["reward"] for r in rows[:3]) / len(rows[:3]),
    }


def export_reward_model(rm_dir: Path, base_path: Path, tokenizer):
    """Our reward model (LoRA merged into the base, head as ``score``) as the sequence-
    classification model TRL expects; HF pools it at the last non-padding token as we do."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tunelab.models import load_causal_lm
    from tunelab.models.reward_head import load_head

    merged = PeftModel.from_pretrained(load_causal_lm(base_path), rm_dir).merge_and_unload()
    config = AutoConfig.from_pretrained(base_path, num_labels=1)
    config.pad_token_id = tokenizer.pad_token_id
    scorer = AutoModelForSequenceClassification.from_config(config)
    scorer.model.load_state_dict(merged.model.state_dict())
    scorer.score.weight.data.copy_(load_head(rm_dir).weight)
    scorer.eval()
    return scorer


def rl_trl(args) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model

    config = rlhf_config(args)
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    scorer = export_reward_model(Path(args.reward_model), base.path, tokenizer)
    prompts = []
    for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines():
        r = json.loads(line)
        msgs = r["messages"] if "messages" in r else [{"role": "user", "content": r["input_text"]}]
        prompts.append({"prompt": msgs})
    timer = step_timer()
    completions = config.prompts_per_step * config.samples_per_prompt
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RLOOTrainer(
            model=load_causal_lm(base.path),
            reward_funcs=scorer,
            reward_processing_classes=tokenizer,
            processing_class=tokenizer,
            args=trl_args(
                RLOOConfig,
                tmp,
                config.reinforcement_learning_train_steps,
                config.reinforcement_learning_rate,
                warmup_steps(config.warmup_ratio, config.reinforcement_learning_train_steps),
                completions,
                config.seed,
                num_generations=config.samples_per_prompt,
                max_completion_length=config.target_sequence_length,
                beta=config.kl_coeff,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
            ),
            train_dataset=Dataset.from_list(prompts),
            peft_config=lora(config.adapter_size, config.lora_alpha, "CAUSAL_LM"),
            callbacks=[timer],
        )
        trainer.train()
    rewards = [x["reward"] for x in timer.logs if "reward" in x]
    return {
        "train_seconds": timer.seconds,
        "final_reward": sum(rewards[-3:]) / max(1, len(rewards[-3:])),
        "first_reward": sum(rewards[:3]) / max(1, len(rewards[:3])),
    }


def dpo_tunelab(args) -> dict:
    from tunelab.recipes.dpo import train_dpo

    result = train_dpo(dpo_config(args), EXAMPLES / "preference.jsonl", Path(args.work) / "dpo")
    # TRL computes reference log-probs inside its steps; ours are computed once before them.
    seconds = result.usage["train_seconds"] + result.usage["reference_seconds"]
    return {"train_seconds": seconds, "final_loss": result.final_train_loss}


def dpo_trl(args) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model

    config = dpo_config(args)
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    timer = step_timer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(
            model=load_causal_lm(base.path),
            processing_class=tokenizer,
            args=trl_args(
                DPOConfig,
                tmp,
                config.train_steps,
                config.learning_rate,
                warmup_steps(config.warmup_ratio, config.train_steps),
                config.batch_size,
                config.seed,
                beta=config.beta,
                max_length=config.prompt_sequence_length + config.target_sequence_length,
            ),
            train_dataset=Dataset.from_list(
                pairs_rows(EXAMPLES / "preference.jsonl", config.batch_size * config.train_steps)
            ),
            peft_config=lora(config.adapter_size, config.lora_alpha, "CAUSAL_LM"),
            callbacks=[timer],
        )
        trainer.train()
    losses = [x["loss"] for x in timer.logs if "loss" in x]
    return {"train_seconds": timer.seconds, "final_loss": losses[-1] if losses else None}


WORKERS = {
    "reward/tunelab": reward_tunelab,
    "reward/trl": reward_trl,
    "reward/trl-bf16": reward_trl,
    "rl/tunelab": rl_tunelab,
    "rl/trl": rl_trl,
    "rl/trl-bf16": rl_trl,
    "dpo/tunelab": dpo_tunelab,
    "dpo/trl": dpo_trl,
    "dpo/trl-bf16": dpo_trl,
}


def worker(args) -> None:
    global TRL_BF16
    TRL_BF16 = args.worker.endswith("-bf16")
    start, cpu = time.perf_counter(), time.process_time()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = WORKERS[args.worker](args)
    result.update(
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
        peak_rss_mb=peak_rss_mb(),
    )
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- orchestration
def spawn(name: str, args, tmp: Path) -> dict:
    slug = name.replace("/", "-")
    result, log = tmp / f"{slug}.json", tmp / f"{slug}.log"
    command = [sys.executable, __file__, "--worker", name, "--result", str(result)]
    command += [
        "--work",
        str(tmp),
        "--reward-model",
        args.reward_model_dir or str(tmp / "rm" / "reward_model"),
    ]
    for flag in ("reward_steps", "rl_steps", "dpo_steps", "batch_size", "prompts_per_step"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--samples-per-prompt", str(args.samples_per_prompt)]
    command += ["--target-length", str(args.target_length), "--base", args.base]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"... {name}", flush=True)
    busy, children, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}):\n{log.read_text()[-4000:]}")
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - children)
    elapsed = time.perf_counter() - start
    return {**json.loads(result.read_text()), "others_busy": others / (elapsed * os.cpu_count())}


def busy_cpu_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-steps", type=int, default=20)
    parser.add_argument("--rl-steps", type=int, default=10)
    parser.add_argument("--dpo-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--target-length", type=int, default=32)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="base model")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads in every run (default: torch's, one per core); 1 compares the "
        "sides' CPU work on a machine other processes share",
    )
    parser.add_argument("--only", nargs="*", choices=RUNS, help="run only these")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the selected runs this many times in turn; the ratios' median is reported",
    )
    parser.add_argument(
        "--reward-model-dir",
        help="an existing reward-model bundle for the RL runs (skips training one)",
    )
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--reward-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import peft
    import torch
    import transformers
    import trl

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} "
        f"({args.threads or torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}"
    )
    pairs = args.batch_size
    print(
        f"reward model: {args.reward_steps} steps x {pairs} pairs; RL: {args.rl_steps} steps x "
        f"{args.prompts_per_step} prompts x {args.samples_per_prompt} samples, answers <= "
        f"{args.target_length} tokens; DPO: {args.dpo_steps} steps x {pairs} pairs; "
        f"candidates <= {args.target_length} tokens"
    )
    runs = args.only or [r for r in RUNS if native_bf16() or not r.endswith("-bf16")]
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_} of {args.rounds}", flush=True)
            results = {}
            for name in runs:
                # The RL runs need a reward model: the first round's serves the later ones.
                if (
                    name.startswith("rl/")
                    and not args.reward_model_dir
                    and not any("reward/tunelab" in done for done in [*rounds, results])
                ):
                    results["reward/tunelab"] = spawn("reward/tunelab", args, Path(tmp))
                if name not in results:
                    results[name] = spawn(name, args, Path(tmp))
            rounds.append(results)
    report(rounds)


def report(rounds: list[dict]) -> None:
    print()
    print(
        f"{'run':<20}{'wall s':>9}{'CPU s':>9}{'train s':>9}{'peak RSS MB':>13}{'others':>8}"
        "  learned"
    )
    for n, results in enumerate(rounds, 1):
        for name, r in results.items():
            learned = (
                f"reward {r['first_reward']:.2f} -> {r['final_reward']:.2f}"
                if "final_reward" in r
                else f"final loss {r['final_loss']:.3f}"
                if r.get("final_loss") is not None
                else ""
            )
            label = f"{name} #{n}" if len(rounds) > 1 else name
            print(
                f"{label:<20}{r['wall_seconds']:>9.1f}{r['cpu_seconds']:>9.1f}"
                f"{r['train_seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}{r['others_busy']:>8.0%}"
                f"  {learned}"
            )
    print()
    for stage in ("reward", "rl", "dpo"):
        walls, steps = [], []
        for results in rounds:
            ours = results.get(f"{stage}/tunelab")
            trl = [name for name in (f"{stage}/trl", f"{stage}/trl-bf16") if name in results]
            if not ours or not trl:
                continue
            fastest = min(trl, key=lambda name: results[name]["train_seconds"])
            theirs = results[fastest]
            walls.append(theirs["wall_seconds"] / ours["wall_seconds"])
            steps.append(theirs["train_seconds"] / ours["train_seconds"])
            print(
                f"{stage}: TuneLab {walls[-1]:.2f}x faster (wall), {steps[-1]:.2f}x (train "
                f"steps) than TRL's faster run ({fastest}), peak RSS {ours['peak_rss_mb']:.0f} "
                f"vs {theirs['peak_rss_mb']:.0f} MB"
            )
        if len(walls) > 1:
            print(
                f"{stage}: median of {len(walls)} rounds {statistics.median(walls):.2f}x (wall), "
                f"{statistics.median(steps):.2f}x (train steps)"
            )


if __name__ == "__main__":
    main()
