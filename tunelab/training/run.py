"""A training run: what every recipe's loop shares, so a recipe keeps only its data, model and loss.

    run = TrainingRun(run_dir, config, on_progress=on_progress, should_stop=should_stop)
    base, tokenizer = run.load_base_model()
    ... load data, build the model, run.place(model) on the config's accelerator ...
    run.start(model, learning_rate=..., total_steps=..., order=BatchOrder(...))
    fast = run.fast_path(model)         # fused LoRA, bf16 where it pays, shared prefixes
    for step in run.steps():
        batch = run.batch(...)            # order.at(step), moved to run.device
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

The run computes on the device its config's ``accelerator``/``devices`` resolve to
(tunelab.models.device): ``place`` puts the model there before ``start`` makes the optimizer,
so its state is created beside the parameters; ``batch`` moves each batch there.

A stop request (cancel, pause, SIGTERM: ``should_stop``) is honoured between steps: a checkpoint
is written and :class:`TrainingInterrupted` raised; the job worker turns it into a paused or
cancelled job.

Data parallel (tunelab.training.distributed): under a process group every rank runs the same
recipe; ``run.local_batch(step)`` is this rank's share of the step's global batch and
``backward_and_step(loss, weight=...)`` averages the gradients over all ranks before the
optimizer step, so every rank holds the same weights. Only rank 0 reads and writes the run
folder (checkpoints, metrics, ``best/``, the bundle), evaluates and reports progress; it sends
the others what they need (the resumed checkpoint, stop requests, evaluation results).
"""

from __future__ import annotations

import json
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
from tunelab.models.device import resolve_placement, to_device
from tunelab.training import distributed, kept
from tunelab.training.atomic import atomic_dir, recover_dir, write_json
from tunelab.training.checkpoint import (
    STATE,
    LoopState,
    list_checkpoints,
    load_latest,
    optimizer_tensors,
    save_checkpoint,
    set_optimizer_tensors,
    trainable_state,
)
from tunelab.training.early_stopping import record_eval
from tunelab.training.fast_path import FastPath
from tunelab.training.lora import adamw
from tunelab.training.metrics import MetricsLog, import_plotting_in_background, plot_loss_curve
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
        ``warmup_ratio``, ``checkpoint_every_steps``, ``accelerator`` and ``devices`` and
        writes it into the bundle."""
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()
        # Resolved again here, not only at submit: a worker may run on another machine.
        self.placement = resolve_placement(
            getattr(config, "accelerator", "auto"), getattr(config, "devices", None)
        )
        self.device = self.placement.device
        logger.info("training on %s", self.placement.describe())
        torch.manual_seed(config.seed)  # seeds every device's generator
        self.world = distributed.current()
        self.run_dir, self.config = run_dir, config
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        if not self.world.is_main:  # rank 0 alone reports and is asked to stop
            on_progress, should_stop = no_progress, lambda: False
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
        self._real_share = True
        self._fast: FastPath | None = None

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

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on the run's device (in place, as ``Module.to``); returned."""
        return module.to(self.device)

    def batch(self, batch):
        """A batch (tensor or dataclass of tensors) on the run's device."""
        return to_device(batch, self.device)

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
        the reward head). ``trained`` is moved to the run's device first, so the optimizer's
        moments and the restored weights live there too."""
        self.trained, self.order = self.place(trained), order
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, learning_rate)
        self.peak_lr, self.total_steps = learning_rate, total_steps
        self.warmup = warmup_steps(self.config.warmup_ratio, total_steps)
        self.checkpoint_every, self.eval_every = self.config.checkpoint_every_steps, eval_every
        self.state = LoopState()
        if self.world.is_main:
            recover_dir(self.run_dir / BEST)
            self.state = load_latest(self.ckpt_dir, trained, self.optimizer) or LoopState()
            self.metrics.truncate_after(self.state.step)
            kept.drop_after(self.run_dir, self.state.step)
            if self.state.step and not (self.run_dir / BEST).exists():
                self.state.best_eval_loss, self.state.best_step = None, None  # lost with it
        if self.world.parallel:
            self._share_start()
        if self._fast is not None:  # installed before this start: its precision is the run's
            self.state.extra["precision"] = self._fast.precision
        self.resumed_from = self.state.step
        return self.state

    def _share_start(self) -> None:
        """Every rank starts from rank 0's weights, optimizer moments and loop state (the
        checkpoint it resumed, or its fresh adapter): identical ranks stay identical."""
        world = self.world
        weights = distributed.broadcast_tensors(trainable_state(self.trained), world)
        moments = distributed.broadcast_tensors(optimizer_tensors(self.optimizer), world)
        state = distributed.broadcast_json(self.state.__dict__, world)
        if not world.is_main:
            named = dict(self.trained.named_parameters())
            with torch.no_grad():
                for name, tensor in weights.items():
                    named[name].copy_(tensor)
            set_optimizer_tensors(self.optimizer, moments)
            self.state = LoopState(**state)

    def fast_path(self, model: torch.nn.Module) -> FastPath:
        """Install the fast training forward on ``model``, in the config's ``precision``
        (once; later calls return it). It is chosen once per run and kept in its checkpoints:
        a resumed run computes the same. Called before :meth:`start` (DPO computes its
        reference through it before the first step), it reads the precision from the latest
        checkpoint, if any."""
        if self._fast is None:
            state = getattr(self, "state", None)
            precision = state.extra.get("precision") if state else self._checkpoint_precision()
            if precision is None:
                precision = resolve_precision(
                    self.config.precision, model.config.hidden_size, self.device.type
                )
            if self.world.parallel:  # rank 0's; every rank must compute alike
                precision = distributed.broadcast_json(precision, self.world)
            self._fast = FastPath.install(model, precision)
        if getattr(self, "state", None) is not None:
            self.state.extra["precision"] = self._fast.precision
        return self._fast

    def _checkpoint_precision(self) -> str | None:
        checkpoints = list_checkpoints(self.ckpt_dir) if self.world.is_main else []
        if not checkpoints:
            return None
        try:
            saved = json.loads((checkpoints[-1] / STATE).read_text())
        except (OSError, ValueError):
            return None  # the run's own checkpoint loading reports a damaged one
        return saved.get("extra", {}).get("precision")

    def start_lora(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        total_steps: int,
        order: BatchOrder,
        validating: bool,
    ) -> FastPath:
        """The start of a recipe that tunes a LoRA language model whose checkpoints are models
        (SFT, DPO): :meth:`start` at the config's ``learning_rate``, evaluating every
        ``eval_every_steps`` when ``validating``; the :meth:`fast_path`; and
        :meth:`keep_checkpoints`, the config's ``keep_checkpoints`` last ones and the best."""
        self.start(
            model,
            learning_rate=self.config.learning_rate,
            total_steps=total_steps,
            order=order,
            eval_every=self.config.eval_every_steps if validating else None,
        )
        fast = self.fast_path(model)
        self.keep_checkpoints(model, tokenizer, self.config.keep_checkpoints)
        return fast

    def learning_rate(self, step: int) -> float:
        return learning_rate_at(step, self.peak_lr, self.warmup, self.total_steps)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def epoch(self) -> float:
        return self.state.step / self.order.steps_per_epoch

    def local_batch(self, step: int) -> list[int]:
        """This rank's share of the examples of the batch at ``step`` (all of it in one
        process). A rank whose share is empty (a batch smaller than the world) is given the
        batch's first example and weighs nothing in the gradient average."""
        items = self.order.at(step)
        if not self.world.parallel:
            self._real_share = True
            return items
        part, self._real_share = distributed.share(items, self.world)
        return part

    def share_of(self, items: list[int]) -> list[int]:
        """This rank's share of ``items`` (a global batch), as :meth:`local_batch` takes it."""
        return distributed.share(items, self.world)[0] if self.world.parallel else items

    def gather_rows(self, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """(sum(sizes), ...): every rank's real rows of ``rows`` in rank order, with their
        gradient (for losses over the global batch, such as in-batch negatives)."""
        if not self.world.parallel:
            return rows
        return distributed.gather_rows(rows[: sizes[self.world.rank]], sizes, self.world)

    def batch_sizes(self, step: int) -> list[int]:
        """Every rank's real share size of the batch at ``step``, in rank order."""
        items = self.order.at(step)
        if not self.world.parallel:
            return [len(items)]
        world = self.world
        shares = (
            distributed.share(items, distributed.World(r, world.size)) for r in range(world.size)
        )
        return [len(part) if real else 0 for part, real in shares]

    # ------------------------------------------------------------------ the loop

    def steps(self) -> Iterator[int]:
        """The steps left to train, each with its learning rate set. Between steps: stop
        requests, periodic checkpoints and progress."""
        state = self.state
        timer_start, timer_step = time.perf_counter(), state.step
        if self.world.is_main and state.step < self.total_steps:
            import_plotting_in_background()  # for the bundle's curve, while the steps run
        while state.step < self.total_steps and not state.stopped_early:
            if self._stop_requested():
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

    def _stop_requested(self) -> bool:
        stop = self.should_stop()
        if self.world.parallel:  # rank 0's answer, so all ranks stop at the same step
            stop = bool(distributed.broadcast_json(stop, self.world))
        return stop

    def step_seconds(self) -> float:
        """Seconds since this step started."""
        return time.perf_counter() - self.step_start

    def backward_and_step(
        self,
        loss: torch.Tensor,
        tokens: int | None = None,
        *,
        weight: float = 1.0,
        **metrics: Any,
    ) -> dict[str, Any]:
        """Backward, clip the gradient norm to 1, one optimizer step; log the step's metrics
        row (``metrics`` next to the loss, learning rate, gradient norm and throughput).

        ``weight``: how many terms ``loss`` is the mean of on this rank (target tokens, pairs,
        samples). With several ranks, gradients, loss and numeric metrics become their
        weight-weighted means over all ranks, and ``tokens`` their sum, before the step."""
        loss.backward()
        self.last_loss = loss.item()
        if self.world.parallel:
            weight = weight if self._real_share else 0.0
            numbers = {
                k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v
            }
            numbers["train_loss"] = self.last_loss
            sums = {"tokens": tokens if tokens is not None and self._real_share else 0}
            comm_start = time.perf_counter()
            means, sums = distributed.all_reduce_weighted(self.params, weight, numbers, sums)
            # Waiting for the slowest rank included: what data parallelism costs per step.
            metrics["comm_seconds"] = time.perf_counter() - comm_start
            self.last_loss = means.pop("train_loss")
            metrics |= means
            if tokens is not None:
                tokens = round(sums["tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        elapsed = self.step_seconds()
        state = self.state
        state.step += 1
        state.tokens_seen += tokens or 0
        state.train_seconds += elapsed
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
        if self.world.is_main:
            self.metrics.append(row)
        return row

    def checkpoint(self) -> None:
        if self.world.is_main:
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
        if not self.world.is_main:  # rank 0 writes every file of the run
            return
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
        result = evaluate() if self.world.is_main else None
        if self.world.parallel:  # rank 0 evaluates; the others wait for its numbers
            result = distributed.broadcast_json(result, self.world)
        self.eval_seconds += time.perf_counter() - start
        self.trained.train(training)
        if self.world.is_main:
            self.metrics.append({"step": self.state.step, **result})
        self.last_eval = result
        self._evaluated_step = self.state.step
        return result

    def track_best(self, eval_loss: float, patience: int | None) -> None:
        """Keep the trainable weights of the best evaluation so far (``best/``); stop early after
        ``patience`` evaluations without a better one."""
        state = self.state
        if record_eval(state, eval_loss, patience) and self.world.is_main:
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
        if self.state.best_step is None or not self.world.is_main or not best.exists():
            return  # only rank 0 writes the bundle
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
            "accelerator": self.placement.describe(),
            "processes": self.world.size,
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
        if not self.world.is_main:
            return folder  # rank 0 writes it
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
