"""Start a recipe on N local processes: this process is rank 0, the others are started here.

    result = run_recipe(train_sft, config, train_file, run_dir, ..., processes=2, **hooks)

Rank 0 stays in the caller's process (the job worker or ``tunelab tune``), with the job's
progress and stop hooks; ranks 1..N-1 run ``python -m tunelab.training.launch`` with
torchrun's environment variables and the recipe call as JSON (a recipe's arguments are a
config, paths and plain values: nothing is pickled). Under ``torchrun`` (``WORLD_SIZE`` set),
no process is started: every rank is already running and joins the group from its variables.

On several machines (``nodes``), each runs the same call with its ``node_rank`` (the job on
machine 0; ``tunelab tune <method> --node-rank R`` elsewhere, see tunelab.cli.tune_follower):
machine R starts its ranks R * processes onwards, and all meet at ``master_addr:master_port``.

A rank that dies before joining fails the others at once (its starter watches it, see
:func:`tunelab.training.distributed.join_group`); one that dies later makes their next
collective fail (:class:`RankFailed`). The job then fails like any transient error and its next
attempt resumes from the last checkpoint. A rank started here dies with its parent
(``PR_SET_PDEATHSIG``), so a killed worker leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

logger = logging.getLogger(__name__)

SPEC_ENV = "TUNELAB_RANK_CALL"


def run_recipe(
    recipe: Callable[..., Any],
    *args: Any,
    processes: int = 1,
    nodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    **kwargs: Any,
) -> Any:
    """``recipe(*args, **kwargs)`` on ``processes`` local ranks (the first here, with
    ``kwargs``' hooks) of a group of ``nodes`` machines meeting at ``master_addr:master_port``
    (this one being ``node_rank``), or on this rank of a torchrun-started group, or simply
    here. Machine ``r``'s ranks are ``r * processes`` onwards: rank 0, the job, is machine 0's."""
    if processes * nodes <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return recipe(*args, **kwargs)
    plain = {k: v for k, v in kwargs.items() if k not in ("on_progress", "should_stop")}
    call = {"recipe": _name(recipe), "args": _encode(list(args)), "kwargs": _encode(plain)}
    group = _Group(processes, nodes, node_rank, master_addr or "127.0.0.1", master_port)
    with _local_group(group, json.dumps(call)) as ranks:
        try:
            return recipe(*args, **kwargs)
        except Exception as exc:
            from tunelab.training.distributed import RankFailed

            if isinstance(exc, RankFailed):
                codes = {r: p.poll() for r, p in ranks.items()}
                raise RankFailed(
                    f"{exc} (exit codes of this machine's other ranks: {codes})"
                ) from exc
            raise


def torchrun_follower() -> bool:
    """True in a rank other than 0 of a group torchrun started (``RANK`` > 0): such a process
    runs the recipe beside rank 0's job, which alone is a job (it submits, writes, registers)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0


def follow(
    recipe: Callable[..., Any],
    config: BaseModel,
    data: Any,
    *more: Any,
    node_rank: int = 0,
) -> None:
    """Train beside rank 0's job without being it: ``recipe(config, data, run_dir, *more)`` in
    a scratch folder (rank 0 sends the checkpoint; nothing is read or written there). As a
    torchrun rank > 0, or as machine ``node_rank`` > 0 of the config's ``nodes``, which starts
    its ``processes`` local ranks here."""
    import tempfile

    from tunelab.training import distributed
    from tunelab.training.run import TrainingInterrupted

    parallel = config.parallel_fields()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="tunelab-rank-") as run_dir:
        try:
            run_recipe(recipe, config, data, Path(run_dir), *more, node_rank=node_rank, **parallel)
        except TrainingInterrupted:
            pass  # rank 0 stopped the run and wrote its checkpoint
        finally:
            distributed.leave()


@dataclass(frozen=True)
class _Group:
    processes: int
    """Ranks on each machine."""
    nodes: int
    node_rank: int
    addr: str
    port: int | None
    """None: one machine, any free port."""


@contextlib.contextmanager
def _local_group(group: _Group, call: str) -> Iterator[dict[int, subprocess.Popen]]:
    """This machine's ranks: the first one here, the others started as processes, all joined
    to the group (:func:`distributed.join_group`, which fails at once if one of them dies
    before joining). Yields the started processes by rank."""
    import torch

    from tunelab.training import distributed

    port = group.port or _free_port()
    first = group.node_rank * group.processes
    size = group.processes * group.nodes
    env = {
        **os.environ,
        SPEC_ENV: call,
        distributed.RENDEZVOUS_ENV: "1",
        "WORLD_SIZE": str(size),
        "LOCAL_WORLD_SIZE": str(group.processes),
        "MASTER_ADDR": group.addr,
        "MASTER_PORT": str(port),
    }
    ranks = {
        first + r: subprocess.Popen(
            [sys.executable, "-m", "tunelab.training.launch"],
            env=env | {"RANK": str(first + r), "LOCAL_RANK": str(r)},
            stdin=subprocess.DEVNULL,
        )
        for r in range(1, group.processes)
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.processes))
    try:
        distributed.join_group(first, size, group.addr, port, watch=ranks)
        yield ranks
    except distributed.RankFailed:
        for proc in ranks.values():  # the group is broken: they could only wait for it
            proc.kill()
        raise
    finally:
        distributed.leave()
        torch.set_num_threads(threads)
        for proc in ranks.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _resolve(name: str) -> Any:
    module, _, attr = name.partition(":")
    if not module.startswith("tunelab."):  # a rank only ever runs TuneLab's own functions
        raise ValueError(f"refusing to run {name!r}: not a tunelab function")
    return getattr(importlib.import_module(module), attr)


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, BaseModel):
        return {"config": _name(type(value)), "value": value.model_dump(mode="json")}
    reload = getattr(value, "reload", None)
    if reload is not None:  # data loaded from files: the rank loads the same files itself
        fn, args, kwargs = reload
        return {"call": fn, "args": _encode(list(args)), "kwargs": _encode(kwargs)}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot pass a {type(value).__name__} to another training process")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "path" in value:
        return Path(value["path"])
    if "config" in value:
        return _resolve(value["config"])(**value["value"])
    if "call" in value:
        return _resolve(value["call"])(*_decode(value["args"]), **_decode(value["kwargs"]))
    return {k: _decode(v) for k, v in value["dict"].items()}


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> int:
    """A rank started by :func:`run_recipe`: run the recipe call in ``TUNELAB_RANK_CALL``."""
    logging.basicConfig(level=logging.WARNING, format="rank %(process)d %(name)s: %(message)s")
    _die_with_parent()
    import torch

    from tunelab.training import distributed
    from tunelab.training.run import TrainingInterrupted

    torch.set_num_threads(distributed.threads_per_rank())
    call = json.loads(os.environ[SPEC_ENV])
    recipe = _resolve(call["recipe"])
    try:
        recipe(*_decode(call["args"]), **_decode(call["kwargs"]))
    except TrainingInterrupted:
        return 0  # rank 0 was asked to stop and has written the checkpoint
    except distributed.RankFailed as exc:
        logger.error("%s", exc)
        return 1
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
