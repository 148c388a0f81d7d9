"""The Ray executor: a worker claims jobs as always, and runs each job's training as a Ray Train
``TorchTrainer`` on a Ray cluster instead of in local processes.

    tunelab worker --executor ray --ray-address HEAD:6379        (or TUNELAB_EXECUTOR=ray)

What stays with the TuneLab worker: the claim, its lease and heartbeat, every pipeline step but
training (validate, evaluate, register, deploy), and the job's progress, metrics and events.
What goes to Ray: the recipe, on ``ScalingConfig(num_workers=config.processes, use_gpu=
config.accelerator == "cuda")``. Ray Train starts the workers and their torch.distributed
process group (with the variables torchrun would set), so the recipe runs exactly as under
tunelab.training.launch: rank 0 reads and writes the run folder, the other ranks follow it.

Between the two, a small ``_Channel`` actor: rank 0 sends it its progress events and asks it
between steps whether to stop; the worker drains the events into the job (progress bar, metrics
mirrored from the run folder, as for a local rank 0) and raises the stop flag when the job is
cancelled or paused, the worker shuts down or it lost its lease. Rank 0 then checkpoints and
stops, as it does locally, so a paused job resumes from that checkpoint.

Failures: a Ray worker that dies (killed, node lost) fails the run. Ray is not asked to restart
it (``FailureConfig(max_failures=0)``): TuneLab's own retry does that, the same as for a local
rank, so the job fails as a transient error (RankFailed), is requeued, and its next attempt
resumes from the last checkpoint. A TuneLab worker killed outright takes its Ray run with it
(Ray ends a driver's actors) and its lease, once expired, hands the job to another worker.

Paths: the recipe is given the same paths as locally (the job's work folder under TUNELAB_HOME,
the datasets' local copies, the operator's added base models). On a cluster of several
machines TUNELAB_HOME must therefore be a shared folder mounted at the same path on every node,
beside a database every node reaches (PostgreSQL); see the README's "Running on a cluster".

Transport: the recipe call reaches the workers as JSON, decoded by tunelab.training.launch (a
rank only ever runs TuneLab's own functions); progress events and the result travel by Ray's
own serialization between the cluster's processes, which trust each other. Nothing is read back
from disk or from a request with pickle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tunelab.config import get_settings
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""How often the worker drains rank 0's progress events and passes a stop request on."""

STOP_GRACE_SECONDS = 120.0
"""How long the worker waits for a run it asked to stop (after its own failure) to end."""

FORWARDED_ENV = ("TUNELAB_COLLECTIVE_TIMEOUT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")
"""The worker's environment a rank needs besides TuneLab's home and cache: never the database
URL or any key (a rank reads only files and talks only to its peers and the channel)."""


class RayUnavailable(RuntimeError):
    """Ray is not installed, or no cluster answers at the address given."""


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "the ray executor needs Ray: pip install 'tunelab[ray]' (Ray Train with torch)"
        ) from exc
    return ray


class RayExecutor:
    """Runs recipes on the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else the cluster
    started on this machine with ``ray start --head``); its :meth:`run_recipe` has the
    signature of tunelab.training.launch's, so a worker takes either."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def connect(self) -> None:
        """Join the cluster once per process (a process is one Ray driver)."""
        ray = _ray()
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise RayUnavailable(
                f"no Ray cluster answers at {address!r} ({exc}); start one with "
                "`ray start --head` and pass its address with --ray-address or TUNELAB_RAY_ADDRESS"
            ) from exc
        logger.info("connected to the Ray cluster at %s", address)

    def run_recipe(
        self,
        recipe: Callable[..., Any],
        *args: Any,
        processes: int = 1,
        nodes: int = 1,
        master_addr: str | None = None,
        master_port: int | None = None,
        on_progress: ProgressCallback = no_progress,
        should_stop: Callable[[], bool] = lambda: False,
        **kwargs: Any,
    ) -> Any:
        """``recipe(*args, **kwargs)`` as a Ray Train run of ``processes`` x ``nodes`` workers,
        with rank 0's progress sent to ``on_progress`` and ``should_stop`` passed on to it;
        returns rank 0's result, or raises what rank 0 raised (TrainingInterrupted on a stop
        request). Ray places the workers on its machines and makes the process group itself:
        the spec's ``master_addr``/``master_port`` (for machines started by hand) do not apply."""
        del master_addr, master_port
        processes *= nodes
        ray = _ray()
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from tunelab.training import distributed
        from tunelab.training.launch import _encode, _name

        self.connect()
        use_gpu = getattr(args[0] if args else None, "accelerator", "auto") == "cuda"
        call = {"recipe": _name(recipe), "args": _encode(list(args)), "kwargs": _encode(kwargs)}
        name = f"tunelab-{uuid.uuid4().hex[:12]}"
        # Named, so the run's config stays plain JSON; num_cpus=0: it must not take a CPU the
        # training workers need.
        channel = ray.remote(num_cpus=0)(_Channel).options(name=name).remote()
        storage = get_settings().work / "ray"  # Ray Train's own run records; removed below
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"call": json.dumps(call), "channel": name, "env": _rank_env()},
            # Both backends on a GPU: the run's small JSON broadcasts stay on CPU tensors.
            torch_config=TorchConfig(
                backend="cpu:gloo,cuda:nccl" if use_gpu else "gloo",
                timeout_s=int(distributed.timeout().total_seconds()),
            ),
            scaling_config=ScalingConfig(num_workers=processes, use_gpu=use_gpu),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                # No retry inside Ray: a dead worker fails the run, and TuneLab requeues the job.
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        logger.info(
            "training %s on Ray: %d workers, use_gpu=%s", call["recipe"], processes, use_gpu
        )
        fit = _Fit(trainer)
        try:
            stopped = self._relay(fit, channel, on_progress, should_stop)
            outcome = ray.get(channel.outcome.remote())
        finally:
            ray.kill(channel)
            shutil.rmtree(storage / name, ignore_errors=True)
        return _result(outcome, fit.error, stopped)

    @staticmethod
    def _relay(fit: _Fit, channel: Any, on_progress: ProgressCallback, should_stop) -> bool:
        """Until the run ends: rank 0's progress events to ``on_progress`` (here, in the
        worker's thread, as a local rank 0 calls it) and a stop request to rank 0. Returns
        whether a stop was asked for."""
        ray = _ray()
        stop_sent = False
        try:
            while True:
                ended = fit.done.wait(POLL_SECONDS)  # before draining: the last events count
                for event in ray.get(channel.drain.remote()):
                    on_progress(Progress(**event))
                if ended:
                    return stop_sent
                if not stop_sent and should_stop():
                    # Rank 0 stops at its next step. (A run still waiting for the cluster's
                    # CPUs or GPUs has no rank 0 to read this, and Ray 2.60's trainer has no
                    # abort to call from here: such a run is not stopped until it starts.)
                    channel.request_stop.remote()
                    stop_sent = True
        except BaseException:
            # Recording progress failed (a lost lease, the database gone): stop the run at its
            # next step, with a checkpoint, rather than leave it training for nobody.
            channel.request_stop.remote()
            fit.done.wait(STOP_GRACE_SECONDS)
            raise


class _Fit(threading.Thread):
    """``trainer.fit()`` in a thread, so the worker's thread relays progress meanwhile."""

    def __init__(self, trainer: Any) -> None:
        super().__init__(name="tunelab-ray-fit", daemon=True)
        self.trainer, self.error = trainer, None
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.trainer.fit()
        except Exception as exc:  # noqa: BLE001 - read with rank 0's outcome in _result
            self.error = exc
        finally:
            self.done.set()


def _result(outcome: tuple[str, Any] | None, error: Exception | None, stopped: bool) -> Any:
    from tunelab.training.distributed import RankFailed
    from tunelab.training.run import TrainingInterrupted

    kind, value = outcome or (None, None)
    if kind == "result":
        return value
    if kind == "interrupted":
        raise TrainingInterrupted(value)
    if kind is None and stopped:  # ended before rank 0 began: the stop, not a failure
        raise TrainingInterrupted("stopped before training began")
    if kind == "error":  # rank 0's own exception: the job classifies it as a local one
        raise value from error
    # Rank 0 ended without a word (killed, its node lost): as a local rank's death, a transient
    # failure whose retry resumes from the last checkpoint.
    raise RankFailed(
        f"a Ray Train worker died ({error}); the job's next attempt resumes from its last "
        "checkpoint"
    ) from error


def _rank_env() -> dict[str, str]:
    settings = get_settings()
    env = {"TUNELAB_HOME": str(settings.home), "TUNELAB_CACHE": str(settings.cache)}
    return env | {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


class _Channel:
    """Between rank 0 and the worker: progress events one way, the stop flag the other, and
    how the run ended (its result, an interruption or rank 0's exception)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop = False
        self.ended: tuple[str, Any] | None = None

    def progress(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop

    def finish(self, outcome: tuple[str, Any]) -> None:
        self.ended = outcome

    def outcome(self) -> tuple[str, Any] | None:
        return self.ended


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the recipe call on this rank, in the process group Ray Train made
    (tunelab.training.distributed joins it as it is). Rank 0 gets the hooks and reports how
    the run ended; the others follow it (it sends them its checkpoint and its stop requests)."""
    import ray
    import ray.train
    import torch

    from tunelab.training import distributed
    from tunelab.training.launch import _decode, _resolve
    from tunelab.training.run import TrainingInterrupted

    os.environ.update(config["env"])  # settings are read from the environment at each use
    torch.set_num_threads(distributed.threads_per_rank())
    call = json.loads(config["call"])
    recipe = _resolve(call["recipe"])
    main = ray.train.get_context().get_world_rank() == 0
    channel = ray.get_actor(config["channel"]) if main else None
    hooks: dict[str, Any] = {}
    if channel is not None:
        hooks = {
            # Fire and forget: one caller's calls to an actor run in order, and finish() waits.
            "on_progress": lambda p: channel.progress.remote(dataclasses.asdict(p)),
            "should_stop": lambda: ray.get(channel.stop_requested.remote()),
        }
    try:
        outcome = ("result", recipe(*_decode(call["args"]), **_decode(call["kwargs"]), **hooks))
    except TrainingInterrupted as exc:
        outcome = ("interrupted", str(exc))
    except Exception as exc:
        if channel is not None:
            _finish(channel, ("error", exc))
        raise
    if channel is not None:
        _finish(channel, outcome)


def _finish(channel: Any, outcome: tuple[str, Any]) -> None:
    import ray

    try:
        ray.get(channel.finish.remote(outcome))
    except Exception:  # noqa: BLE001 - an exception Ray cannot serialize: send its text
        kind, value = outcome
        ray.get(channel.finish.remote((kind, RuntimeError(f"{type(value).__name__}: {value}"))))
