"""A training run: what every recipe's loop shares, so a recipe keeps only its data, model and loss.

    run = TrainingRun(run_dir, config, on_progress=on_progress, should_stop=should_stop)
    base, tokenizer = run.load_base_model()
    ... load data, build the model ...
    run.start(model, learning_rate=..., total_steps=..., order=BatchOrder(...))
    fast = run.fast_path(model)         # fused LoRA, bf16 where it pays, shared prefixes
    for step in run.steps():
        batch = ...                       # order.at(step): the batch order is a function of the step
        loss = ...                        # from fast.hidden(batch ids, loss mask)
        run.backward_and_step(loss, tokens=..., some_metric=...)
        if run.evaluation_due():
            run.evaluate(lambda: {...})
    run.write_bundle("adapter", model, tokenizer, ...)

The run owns its folder (``run_dir``, named by a system-made id): ``checkpoints/``,
``metrics.jsonl``, ``best/`` and the bundle. Killing it at any moment and running the same
command again resumes from the last checkpoint and ends with the same adapter as an
uninterrupted run: the batch order and the learning rate are pure functions of the step, and
the trainable weights, optimizer moments, RNG state and loop counters come back from the
checkpoint (tunelab.training.checkpoint), written atomically.

A stop request (cancel, pause, SIGTERM: ``should_stop``) is honoured between steps: a checkpoint
is written and :class:`TrainingInterrupted` raised; the job worker turns it into a paused or
cancelled job.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.data.batching import epoch_batches
from tunelab.training import kept
from tunelab.training.atomic import atomic_dir, recover_dir, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint, trainable_state
from tunelab.training.early_stopping import record_eval
from tunelab.training.fast_path import FastPath
from tunelab.training.lora import adamw
from tunelab.training.metrics import MetricsLog, plot_loss_curve
from tunelab.training.precision import resolve_precision
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

BEST = "best"
"""The run folder's copy of the trainable weights at the best evaluation so far."""


class RunHooks(TypedDict, total=False):
    """How a caller follows and stops a run: every recipe takes these as keywords."""

    on_progress: ProgressCallback
    """Called with each progress event (the CLI's bar, the job's progress, a test's list)."""
    should_stop: Callable[[], bool]
    """Asked between steps; True checkpoints the run and raises :class:`TrainingInterrupted`."""


@dataclass(kw_only=True)
class RunResult:
    """What every recipe returns; each adds its own outputs."""

    adapter_dir: Path
    """The bundle: the adapter (and, for a reward model, its head) with everything beside it."""
    steps: int
    final_train_loss: float | None
    resumed_from_step: int
    """0 for a fresh run; the checkpoint's step for a resumed one."""
    usage: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """The kept checkpoints (tunelab.training.kept), oldest first: {step, epoch, metrics, dir}."""


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop; a checkpoint was written and the same command resumes it."""


def warmup_steps(ratio: float, total_steps: int) -> int:
    """Warm-up length: a positive ratio always warms up for at least one step."""
    return max(1, int(ratio * total_steps)) if ratio else 0


def learning_rate_at(step: int, peak: float, warmup: int, total_steps: int) -> float:
    """Linear warm-up, then linear decay to zero: a pure function of the step, so resuming
    needs no scheduler state."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


class BatchOrder:
    """Which examples each step trains on: seeded per epoch, batches grouped by length (see
    tunelab.data.batching.epoch_batches), so the batch at any step is a function of the step."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if not lengths:
            raise ValueError("no training examples")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.steps_per_epoch = math.ceil(len(self.lengths) / batch_size)
        self._epoch: tuple[int, list[list[int]]] | None = None

    def at(self, step: int) -> list[int]:
        """Indices of the examples of the batch at ``step``."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch))
        return self._epoch[1][index]


class TrainingRun:
    """One run's folder, loop state, schedule, checkpoints, progress, usage and bundle."""

    def __init__(
        self,
        run_dir: Path,
        config: Any,
        *,
        on_progress: ProgressCallback = no_progress,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """``config``: the method's typed config; the run reads its ``seed``, ``base_model``,
        ``warmup_ratio``, ``checkpoint_every_steps`` and writes it into the bundle."""
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()
        torch.manual_seed(config.seed)
        self.run_dir, self.config = run_dir, config
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.on_progress, self.should_stop = on_progress, should_stop
        self.base_ref, self.base_path = config.base_model, None
        self.last_loss: float | None = None
        self.last_eval: dict[str, Any] = {}
        self.message = ""
        """Shown with each step's progress (e.g. the RL stage's mean reward)."""
        self.eval_seconds = 0.0
        self.final_usage: dict[str, Any] = {}
        self._keep: tuple[torch.nn.Module, Any, int, list[str] | None] | None = None
        self._evaluated_step: int | None = None

    def report(self, phase: str, message: str = "") -> None:
        """A progress event outside the steps: loading, validating, preparing, saving."""
        state = getattr(self, "state", None)
        step, total = (state.step, self.total_steps) if state else (0, 0)
        self.on_progress(Progress(phase, step, total, message=message))

    def load_base_model(self):
        """Resolve the config's causal base model: (ResolvedModel, its tokenizer)."""
        from tunelab.models import load_tokenizer, resolve_model

        self.report("loading", f"resolving base model {self.config.base_model}")
        base = resolve_model(self.config.base_model)
        self.base_ref, self.base_path = base.ref, base.path
        return base, load_tokenizer(base.path)

    # ------------------------------------------------------------------ setup

    def start(
        self,
        trained: torch.nn.Module,
        *,
        learning_rate: float,
        total_steps: int,
        order: BatchOrder,
        eval_every: int | None = None,
    ) -> LoopState:
        """Make the optimizer for ``trained``'s trainable parameters and restore the latest
        checkpoint, if any (``trained`` is everything checkpoints hold: the model, plus e.g.
        the reward head)."""
        self.trained, self.order = trained, order
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, learning_rate)
        self.peak_lr, self.total_steps = learning_rate, total_steps
        self.warmup = warmup_steps(self.config.warmup_ratio, total_steps)
        self.checkpoint_every, self.eval_every = self.config.checkpoint_every_steps, eval_every
        recover_dir(self.run_dir / BEST)
        self.state = load_latest(self.ckpt_dir, trained, self.optimizer) or LoopState()
        self.resumed_from = self.state.step
        self.metrics.truncate_after(self.state.step)
        kept.drop_after(self.run_dir, self.state.step)
        if self.state.step and not (self.run_dir / BEST).exists():
            self.state.best_eval_loss, self.state.best_step = None, None  # lost with its folder
        return self.state

    def fast_path(self, model: torch.nn.Module) -> FastPath:
        """Install the fast training forward on ``model`` (after :meth:`start`), in the config's
        ``precision``. It is chosen once per run and kept in its checkpoints: a resumed run
        computes the same."""
        if "precision" not in self.state.extra:
            width = model.config.hidden_size
            self.state.extra["precision"] = resolve_precision(self.config.precision, width)
        return FastPath.install(model, self.state.extra["precision"])

    def learning_rate(self, step: int) -> float:
        return learning_rate_at(step, self.peak_lr, self.warmup, self.total_steps)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def epoch(self) -> float:
        return self.state.step / self.order.steps_per_epoch

    # ------------------------------------------------------------------ the loop

    def steps(self) -> Iterator[int]:
        """The steps left to train, each with its learning rate set. Between steps: stop
        requests, periodic checkpoints and progress."""
        state = self.state
        timer_start, timer_step = time.perf_counter(), state.step
        while state.step < self.total_steps and not state.stopped_early:
            if self.should_stop():
                self.checkpoint()
                raise TrainingInterrupted(
                    f"stopped at step {state.step}; the same command resumes it"
                )
            self.step_start = time.perf_counter()
            self.lr = self.learning_rate(state.step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            self._tokens_per_second: float | None = None
            yield state.step
            if state.step % self.checkpoint_every == 0 and state.step < self.total_steps:
                self.checkpoint()
            if self._keep is not None and (
                state.step % self.checkpoint_every == 0
                or self._evaluated_step == state.step
                or state.step >= self.total_steps
                or state.stopped_early
            ):
                self.keep_checkpoint()
            # Wall time per step in this process, evaluations and checkpoints included.
            rate = (time.perf_counter() - timer_start) / max(1, state.step - timer_step)
            best = state.best_eval_loss
            self.on_progress(
                Progress(
                    "training",
                    state.step,
                    self.total_steps,
                    train_loss=self.last_loss,
                    eval_loss=best if best is not None else self.last_eval.get("eval_loss"),
                    tokens_per_second=self._tokens_per_second,
                    eta_seconds=rate * (self.total_steps - state.step),
                    message=self.message,
                )
            )

    def step_seconds(self) -> float:
        """Seconds since this step started."""
        return time.perf_counter() - self.step_start

    def backward_and_step(
        self, loss: torch.Tensor, tokens: int | None = None, **metrics: Any
    ) -> dict[str, Any]:
        """Backward, clip the gradient norm to 1, one optimizer step; log the step's metrics
        row (``metrics`` next to the loss, learning rate, gradient norm and throughput)."""
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        elapsed = self.step_seconds()
        state = self.state
        state.step += 1
        state.tokens_seen += tokens or 0
        state.train_seconds += elapsed
        self.last_loss = loss.item()
        row = {
            "step": state.step,
            "epoch": self.epoch,
            "train_loss": self.last_loss,
            **metrics,
            "learning_rate": self.lr,
            "grad_norm": float(grad_norm),
            "step_seconds": elapsed,
        }
        if tokens is not None:
            self._tokens_per_second = tokens / elapsed
            row |= {"tokens": tokens, "tokens_per_second": self._tokens_per_second}
        self.metrics.append(row)
        return row

    def checkpoint(self) -> None:
        save_checkpoint(self.ckpt_dir, self.trained, self.optimizer, self.state)

    # ------------------------------------------------------------------ kept checkpoints

    def keep_checkpoints(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        keep_last: int,
        adapters: list[str] | None = None,
    ) -> None:
        """Keep ``model``'s adapter (``adapters``: which ones, default all) at the last
        ``keep_last`` candidate steps (every resume checkpoint, every evaluation, the last step)
        and at the best validation loss, as servable bundles (tunelab.training.kept); 0 keeps
        none. Call after :meth:`start`."""
        self._keep = (model, tokenizer, keep_last, adapters) if keep_last > 0 else None

    def keep_checkpoint(self) -> None:
        """Write this step's kept checkpoint and drop those no longer chosen."""
        model, tokenizer, keep_last, adapters = self._keep
        step = self.state.step
        # Saving must not move the RNG the next steps draw from: a run resumed from this step's
        # resume checkpoint (whose RNG state is taken before this) must train identically.
        rng = torch.get_rng_state()
        try:
            self._write_kept(model, tokenizer, keep_last, adapters, step)
        finally:
            torch.set_rng_state(rng)

    def _write_kept(self, model, tokenizer, keep_last, adapters, step) -> None:
        kept.write_kept(
            self.run_dir,
            step=step,
            epoch=self.epoch,
            metrics=kept.step_metrics(self.metrics.rows(), step),
            model=model,
            tokenizer=tokenizer,
            tuning_config={**self.config.model_dump(), "base_model_path": str(self.base_path)},
            manifest={"method": self.config.method, "base_model": self.base_ref},
            adapters=adapters,
        )
        kept.prune(self.run_dir, keep_last)

    def kept_checkpoints(self) -> list[dict[str, Any]]:
        """The kept checkpoints, oldest first: {step, epoch, metrics, dir}."""
        return [
            {**kept.read_info(folder), "dir": folder} for _, folder in kept.list_kept(self.run_dir)
        ]

    # ------------------------------------------------------------------ evaluation

    def evaluation_due(self) -> bool:
        """Every ``eval_every`` steps, and after the last."""
        step = self.state.step
        return bool(self.eval_every) and (step % self.eval_every == 0 or step == self.total_steps)

    def evaluate(self, evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``evaluate`` (which may put the model in eval mode: training mode is restored),
        log its numbers at this step and time it."""
        self.on_progress(
            Progress("evaluating", self.state.step, self.total_steps, train_loss=self.last_loss)
        )
        training = self.trained.training
        start = time.perf_counter()
        result = evaluate()
        self.eval_seconds += time.perf_counter() - start
        self.trained.train(training)
        self.metrics.append({"step": self.state.step, **result})
        self.last_eval = result
        self._evaluated_step = self.state.step
        return result

    def track_best(self, eval_loss: float, patience: int | None) -> None:
        """Keep the trainable weights of the best evaluation so far (``best/``); stop early after
        ``patience`` evaluations without a better one."""
        state = self.state
        if record_eval(state, eval_loss, patience):
            from safetensors.torch import save_file

            with atomic_dir(self.run_dir / BEST) as tmp:
                save_file(trainable_state(self.trained), tmp / "trainable.safetensors")
        elif state.stopped_early:
            logger.info(
                "early stopping at step %d: no better eval loss for %d evaluations "
                "(best %.4f at step %d)",
                state.step,
                patience,
                state.best_eval_loss,
                state.best_step,
            )

    def restore_best(self) -> None:
        """Put back the weights of the best evaluation, when there was one."""
        best = self.run_dir / BEST / "trainable.safetensors"
        if self.state.best_step is None or not best.exists():
            return
        from safetensors.torch import load_file

        named = dict(self.trained.named_parameters())
        with torch.no_grad():
            for name, tensor in load_file(best).items():
                named[name].copy_(tensor)

    # ------------------------------------------------------------------ the end

    def result(self, folder: Path) -> dict[str, Any]:
        """The :class:`RunResult` fields of this run, whose bundle is ``folder``."""
        return dict(
            adapter_dir=folder,
            steps=self.state.step,
            final_train_loss=self.last_loss,
            resumed_from_step=self.resumed_from,
            usage=self.final_usage,
            checkpoints=self.kept_checkpoints(),
        )

    def billable_tokens(self, dataset_tokens: int) -> int:
        """As Vertex bills: the dataset's tokens times the epochs trained (whole or fractional)."""
        return round(dataset_tokens * self.total_steps / self.order.steps_per_epoch)

    def usage(self, **extra: Any) -> dict[str, Any]:
        """What the run used: tokens trained on, seconds (training, evaluation, wall, CPU), peak
        memory, and the method's own figures (``extra``); kept for the bundle and the result."""
        self.final_usage = {
            "trained_tokens": self.state.tokens_seen,
            "train_seconds": round(self.state.train_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),  # this process's share
            "wall_seconds": round(time.perf_counter() - self.wall_start, 3),
            "cpu_seconds": round(time.process_time() - self.cpu_start, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **(
                {"precision": self.state.extra["precision"]}
                if "precision" in self.state.extra
                else {}
            ),
            **extra,
        }
        return self.final_usage

    def write_bundle(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        datasets: dict[str, Any],
        title: str,
        name: str = "adapter",
        kind: str = "lora_adapter",
        data_stats: dict[str, Any] | None = None,
        save_more: Callable[[Path], None] = lambda folder: None,
        adapters: list[str] | None = None,
        plot: Callable[[list[dict[str, Any]], Path, str], None] = plot_loss_curve,
        plot_name: str = "loss_curve.png",
        **manifest: Any,
    ) -> Path:
        """Write the bundle ``run_dir/name`` atomically and end the run (its checkpoints go).

        The bundle holds the model's adapter (``adapters``: which ones, default all), the
        tokenizer, what ``save_more(folder)`` adds (a reward head, an encoder's pooling),
        ``tuning_config.json``, ``data_stats.json``, ``metrics.jsonl``, the curve and, last,
        ``manifest.json``: kind, method, base model, version, ``datasets`` ({role: sha256}),
        steps, usage, every file's sha256, and the method's own entries (``manifest``).

        ``datasets``: {role: validation report (None for a role not given)}: their sha256 go in
        the manifest, their statistics in ``data_stats.json`` beside ``data_stats``. A method
        whose data has no reports gives {role: sha256} and its own ``data_stats``.
        """
        stats = {
            r: d.to_dict() if d else None for r, d in datasets.items() if not isinstance(d, str)
        }
        hashes = {r: d if isinstance(d, str) else d.sha256 for r, d in datasets.items() if d}
        usage = self.final_usage or self.usage()
        self.report("saving", f"writing {name}")
        config = self.config
        folder = self.run_dir / name
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=adapters)
            tokenizer.save_pretrained(tmp)
            save_more(tmp)
            write_json(
                tmp / "tuning_config.json",
                {**config.model_dump(), "base_model_path": str(self.base_path)},
            )
            write_json(tmp / "data_stats.json", stats | (data_stats or {}))
            shutil.copyfile(self.metrics.path, tmp / "metrics.jsonl")
            plot(self.metrics.rows(), tmp / plot_name, title)
            write_json(
                tmp / MANIFEST,
                {
                    "kind": kind,
                    "method": config.method,
                    "base_model": self.base_ref,
                    "tunelab_version": __version__,
                    "datasets": hashes,
                    "steps": self.state.step,
                    **manifest,
                    "usage": usage,
                    "files": file_hashes(tmp),
                },
            )
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # complete: nothing left to resume
        self.on_progress(
            Progress("done", self.state.step, self.total_steps, train_loss=self.last_loss)
        )
        return folder
