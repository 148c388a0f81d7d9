"""The RLHF and DPO stages against TRL's trainers, on the same model, data, steps and CPU.

    python bench/bench_rlhf.py [--reward-steps 20] [--rl-steps 10] [--dpo-steps 20] \
        [--batch-size 8] [--prompts-per-step 4] [--samples-per-prompt 4] [--target-length 32] \
        [--only RUN ...] [--threads N] [--rounds N] [--seeds S ...]

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

What RL learned is judged alike for both trainers, after each run's measurement: the saved
policy adapter and the base model under it answer the held-out prompts of
``examples/preference/eval_prompts.jsonl`` (greedy, and 4 samples a prompt at temperature 1 with
fixed seeds) through TuneLab's runner, and the reward model of ``reward/tunelab`` scores every
answer through TuneLab's scorer. The scores the trainers log during training are not comparable
(TRL renders the text it scores its own way), these are. ``--seeds S ...`` runs each RL run once
per seed: a 10-step run's outcome moves with its seed as much as with its trainer, so equal or
better reward is read from the mean gain over the seeds.
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
        **({"seed": args.seed} if args.seed is not None else {}),
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
        Path(args.work) / f"rl-{args.seed}",
    )
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_seconds": result.usage["train_seconds"],
        "final_reward": sum(r["reward"] for r in rows[-3:]) / len(rows[-3:]),
        "first_reward": sum(r["reward"] for r in rows[:3]) / len(rows[:3]),
        "policy_dir": str(result.adapter_dir),
    }


def merged_model(base_path: Path, adapter_dir: Path):
    """The base causal LM with a PEFT adapter folder (ours or TRL's) merged into its weights."""
    from peft import PeftModel

    from tunelab.models import load_causal_lm

    return PeftModel.from_pretrained(load_causal_lm(base_path), adapter_dir).merge_and_unload()


def export_reward_model(rm_dir: Path, base_path: Path, tokenizer):
    """Our reward model (LoRA merged into the base, head as ``score``) as the sequence-
    classification model TRL expects; HF pools it at the last non-padding token as we do."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tunelab.models.reward_head import load_head

    merged = merged_model(base_path, rm_dir)
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
    policy_dir = Path(args.work) / f"{args.worker.replace('/', '-')}-{args.seed}"
    trainer.save_model(str(policy_dir))  # the PEFT adapter, judged like ours below
    rewards = [x["reward"] for x in timer.logs if "reward" in x]
    return {
        "train_seconds": timer.seconds,
        "final_reward": sum(rewards[-3:]) / max(1, len(rewards[-3:])),
        "first_reward": sum(rewards[:3]) / max(1, len(rewards[:3])),
        "policy_dir": str(policy_dir),
    }


JUDGE_SAMPLES = 4
"""Answers per held-out prompt in the sampled judgement (temperature 1, as RL samples)."""


def judge_policy(policy_dir: Path, args) -> dict:
    """The trained policy against the base model on the held-out prompts, both trainers'
    adapters judged by the same code: answers generated by TuneLab's runner from the base model
    and from the base with the PEFT adapter merged in, scored by the reward model of
    ``reward/tunelab`` (merged likewise) through TuneLab's scorer. The scores the trainers log
    are not comparable (TRL renders the text it scores its own way), these are. Greedy: one
    answer a prompt, what a user gets at temperature 0. Sampled: JUDGE_SAMPLES a prompt at
    temperature 1, fixed seeds: the expected reward RL maximises."""
    import torch

    from tunelab.data.preference import load_prompts
    from tunelab.evaluation.generate import greedy_params, policy_answers
    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
    from tunelab.models.reward_head import load_head
    from tunelab.recipes.rlhf import reward_scores
    from tunelab.serving.prepacked import prepack_linears
    from tunelab.training.sampling_policy import rollout_params

    config = rlhf_config(args)
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    prompts, _ = load_prompts(
        EXAMPLES / "eval_prompts.jsonl",
        tokenizer,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )

    # bf16 where the CPU computes it natively, as the RL steps and rollouts run there, with the
    # weights prepacked for oneDNN as rollouts decode (a plain bf16 product reorders its weight
    # at every call: the judge took ~5 minutes a policy).
    dtype = torch.bfloat16 if native_bf16() else torch.float32

    def ready(model):
        model = model.eval().to(dtype)
        prepack_linears(model)
        return model

    # Adapters merged into the weights: no LoRA products per token.
    models = {
        "base": ready(load_causal_lm(base.path)),
        "tuned": ready(merged_model(base.path, policy_dir)),
    }
    scorer = ready(merged_model(base.path, Path(args.reward_model)))
    head = load_head(Path(args.reward_model)).to(dtype)
    greedy = greedy_params(config.target_sequence_length)
    sampled = rollout_params(1.0, config.target_sequence_length, seed=0)
    out: dict = {"prompts": len(prompts)}
    for how, params, samples in (("greedy", greedy, 1), ("sampled", sampled, JUDGE_SAMPLES)):
        scores = {}
        for who, model in models.items():
            answers, cut = policy_answers(model, tokenizer, prompts, params, 64, samples=samples)
            scores[who] = reward_scores(scorer, head, tokenizer, prompts, answers, cut, 64)
        out[how] = {who: s.float().mean().item() for who, s in scores.items()}
        out[how]["win_rate"] = (scores["tuned"] > scores["base"]).float().mean().item()
    out["dtype"] = str(dtype).removeprefix("torch.")
    return out


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
    if "policy_dir" in result:  # after the measurement: judging is not part of the run
        result["judged"] = judge_policy(Path(result["policy_dir"]), args)
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- orchestration
def spawn(name: str, args, tmp: Path, seed: int | None = None) -> dict:
    slug = name.replace("/", "-") + (f"-{seed}" if seed is not None else "")
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
    if seed is not None:
        command += ["--seed", str(seed)]
    print(f"... {name}" + (f" (seed {seed})" if seed is not None else ""), flush=True)
    busy, children, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}):\n{log.read_text()[-4000:]}")
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - children)
    elapsed = time.perf_counter() - start
    return {**json.loads(result.read_text()), "others_busy": others / (elapsed * os.cpu_count())}


def warm_file_cache(base: str) -> None:
    """Read the base model's files once before the runs, so that the first run does not pay
    the disk reads alone (the first reward/tunelab of a bench took 19.9 s wall, thirteen later
    runs of it 14.2-18.3 s; likely cause, not proven)."""
    from tunelab.models import resolve_model

    for path in sorted(resolve_model(base).path.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


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
        "--seeds",
        type=int,
        nargs="+",
        help="run each RL run once per seed (default: the config's seed); one training run "
        "cannot tell a trainer's trajectory from its seed's, several can",
    )
    parser.add_argument(
        "--reward-model-dir",
        help="an existing reward-model bundle for the RL runs (skips training one)",
    )
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--reward-model", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
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
    warm_file_cache(args.base)
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
                for seed in (args.seeds or [None]) if name.startswith("rl/") else [None]:
                    key = name if seed is None else f"{name} seed={seed}"
                    if key not in results:
                        results[key] = spawn(name, args, Path(tmp), seed)
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
            for key, ours in results.items():
                if not key.startswith(f"{stage}/tunelab"):
                    continue
                suffix = key.removeprefix(f"{stage}/tunelab")  # "" or " seed=S"
                trl = [
                    n for n in (f"{stage}/trl{suffix}", f"{stage}/trl-bf16{suffix}") if n in results
                ]
                if not trl:
                    continue
                fastest = min(trl, key=lambda name: results[name]["train_seconds"])
                theirs = results[fastest]
                walls.append(theirs["wall_seconds"] / ours["wall_seconds"])
                steps.append(theirs["train_seconds"] / ours["train_seconds"])
                print(
                    f"{stage}{suffix}: TuneLab {walls[-1]:.2f}x faster (wall), {steps[-1]:.2f}x "
                    f"(train steps) than TRL's faster run ({fastest}), peak RSS "
                    f"{ours['peak_rss_mb']:.0f} vs {theirs['peak_rss_mb']:.0f} MB"
                )
        if len(walls) > 1:
            print(
                f"{stage}: median of {len(walls)} pairs {statistics.median(walls):.2f}x (wall), "
                f"{statistics.median(steps):.2f}x (train steps)"
            )
    report_judged(rounds)


def report_judged(rounds: list[dict]) -> None:
    """The RL policies on the held-out prompts, every trainer's judged by the same code."""
    judged = [
        (n, key, r) for n, res in enumerate(rounds, 1) for key, r in res.items() if "judged" in r
    ]
    if not judged:
        return
    print()
    print(
        f"RL policies on the {judged[0][2]['judged']['prompts']} held-out prompts, judged alike "
        f"(TuneLab's runner and reward-model scorer): mean score base -> tuned"
    )
    gains: dict[str, dict[str, list[float]]] = {}
    for n, key, r in judged:
        j = r["judged"]
        label = f"{key} #{n}" if len(rounds) > 1 else key
        print(
            f"  {label:<28} greedy {j['greedy']['base']:6.2f} -> {j['greedy']['tuned']:6.2f} "
            f"(wins {j['greedy']['win_rate']:.0%})   sampled x{JUDGE_SAMPLES} "
            f"{j['sampled']['base']:6.2f} -> {j['sampled']['tuned']:6.2f}"
        )
        side = gains.setdefault(key.split()[0], {"greedy": [], "sampled": []})
        for how in ("greedy", "sampled"):
            side[how].append(j[how]["tuned"] - j[how]["base"])
    for side, g in gains.items():
        print(
            f"{side}: mean gain over {len(g['sampled'])} runs: sampled "
            f"{statistics.mean(g['sampled']):+.2f} (each {', '.join(f'{x:+.2f}' for x in g['sampled'])}), "
            f"greedy {statistics.mean(g['greedy']):+.2f}"
        )


if __name__ == "__main__":
    main()
