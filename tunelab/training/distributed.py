"""Data parallelism through ``torch.distributed``: what the training run needs to train one
global batch on several processes as if it were one.

Why an explicit all-reduce and not ``DistributedDataParallel``: the fast path (fused LoRA,
shared prefixes) calls the decoder's parts directly, not the wrapped module's forward, and the
trainable part is a few MB of LoRA weights: one flat buffer, reduced once per step after the
backward, costs the same as DDP's buckets and keeps every recipe's loop unchanged.

The exact sum: each rank's loss is a mean over its own share of the batch (its target tokens,
pairs or samples: its ``weight``). Reducing ``weight * grad`` and ``weight`` together and
dividing gives the gradient of the mean over the whole global batch, so 2 ranks x 4 examples
train the same adapter as 1 rank x 8 (up to float summation order).

Ranks meet through torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``): set by ``torchrun``
or by :mod:`tunelab.training.launch`, which starts the other ranks of a job: those meet
through :func:`join_group`, where a rank that dies before joining fails the others at once.
Every collective has a timeout (``TUNELAB_COLLECTIVE_TIMEOUT``, seconds), so a rank that dies
later fails the others with an error instead of a hang; gloo notices a dead peer's closed
socket at once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 600
"""Longest wait in one collective. Rank 0 evaluates while the others wait in a broadcast, so
this bounds an evaluation too; a dead peer is usually noticed at once (closed socket)."""


class RankFailed(RuntimeError):
    """Another rank of the run died or stopped answering; the run resumes from its last
    checkpoint when started again."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes (checkpoints, metrics, the bundle) and reports."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("TUNELAB_COLLECTIVE_TIMEOUT", "0") or 0)
                     or DEFAULT_TIMEOUT_SECONDS)  # fmt: skip


def backend() -> str:
    """gloo for CPU tensors, and nccl for CUDA tensors when there is a GPU: each collective
    goes to the backend of its tensors' device (the run's small JSON broadcasts stay on CPU)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def current() -> World:
    """This process's place, joining the process group that torchrun-style variables
    describe if it has not been joined yet; ``World()`` alone."""
    if not dist.is_available():
        return World()
    if not dist.is_initialized():
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        rank = int(os.environ["RANK"])
        if os.environ.get(RENDEZVOUS_ENV):  # started by tunelab.training.launch
            return join_group(rank, size, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        logger.info("joining a process group of %d as rank %d (%s)", size, rank, backend())
        dist.init_process_group(backend(), rank=rank, world_size=size, timeout=timeout())
    return World(dist.get_rank(), dist.get_world_size())


RENDEZVOUS_ENV = "TUNELAB_RENDEZVOUS"
"""Set in the ranks TuneLab starts: they meet through :func:`join_group`, not torchrun's env://."""

_JOINED, _READY, _FAILED = "tunelab/joined", "tunelab/ready", "tunelab/failed"


def join_group(
    rank: int, size: int, addr: str, port: int, watch: Mapping[int, subprocess.Popen] | None = None
) -> World:
    """Join a group of ``size`` as ``rank``, meeting at rank 0's TCP store on ``addr:port``.

    Why not plain ``init_process_group``: it waits for every rank up to the collective timeout
    (10 minutes), so a rank that dies while starting (a bad path, an import error, out of
    memory) would leave the others waiting that long. Here the ranks first count themselves in
    the store, and a process that started some of them (``watch``: {rank: process}) watches them
    meanwhile: when one exits before joining, it says so in the store and every process still
    waiting (rank 0, the other machines' first ranks) raises :class:`RankFailed` at once. Only
    then is the process group made, with the collective timeout. A machine that never starts
    is waited for as long as that timeout.
    """
    store = dist.TCPStore(
        addr, port, size, is_master=rank == 0, timeout=timeout(), wait_for_workers=False
    )
    if rank == 0:
        _wait(store, lambda: int(store.add(_JOINED, 0)) >= size - 1, watch or {}, size)
        store.set(_READY, "1")
    else:
        store.add(_JOINED, 1)
        if watch:
            _wait(store, lambda: store.check([_READY]), watch, size)
    logger.info("joining a process group of %d as rank %d (%s)", size, rank, backend())
    dist.init_process_group(backend(), store=store, rank=rank, world_size=size, timeout=timeout())
    return World(rank, size)


def _wait(
    store: dist.TCPStore,
    done: Callable[[], bool],
    watch: Mapping[int, subprocess.Popen],
    size: int,
) -> None:
    deadline = time.monotonic() + timeout().total_seconds()
    while not done():
        if store.check([_FAILED]):
            raise RankFailed(store.get(_FAILED).decode())
        for rank, proc in watch.items():
            code = proc.poll()
            if code is not None:
                message = (
                    f"training process of rank {rank} exited (code {code}) before joining the "
                    "others; its error is in the log above"
                )
                store.set(_FAILED, message)
                raise RankFailed(message)
        if time.monotonic() > deadline:
            raise RankFailed(
                f"only {int(store.add(_JOINED, 0)) + 1} of {size} training processes joined "
                f"within {timeout().total_seconds():.0f} s"
            )
        time.sleep(0.05)


def threads_per_rank() -> int:
    """Cores shared out between the ranks on this machine: two ranks of two threads each on
    two cores would spend their time waiting for each other."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def _failed(exc: Exception) -> RankFailed:
    return RankFailed(
        f"another training process died or timed out ({exc}); start the job again to resume "
        "from its last checkpoint"
    )


def share(items: list[int], world: World) -> tuple[list[int], bool]:
    """This rank's contiguous share of a global batch (sizes differ by at most one), and
    whether it is a real one. A batch smaller than the world leaves some ranks with nothing:
    they take the batch's first example with weight 0, so every rank runs the same collectives."""
    base, extra = divmod(len(items), world.size)
    start = world.rank * base + min(world.rank, extra)
    part = items[start : start + base + (world.rank < extra)]
    return (part, True) if part else (items[:1], False)


def all_reduce_weighted(
    params: list[torch.nn.Parameter],
    weight: float,
    means: dict[str, float],
    sums: dict[str, float],
) -> tuple[dict[str, float], dict[str, float]]:
    """Make every rank's gradients the ``weight``-weighted mean of all ranks' gradients, in one
    flat fp32 all-reduce (the gradients' own precision: half fp64's bytes) that also carries ``means`` (weighted means too: loss, accuracy...) and ``sums`` (token counts).
    Returns the reduced (means, sums)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    n_grad = sum(g.numel() for g in grads)
    extras = [weight * v for v in means.values()] + [weight] + list(sums.values())
    flat = torch.cat(
        [g.reshape(-1).float() for g in grads]
        + [torch.tensor(extras, dtype=torch.float32, device=grads[0].device)]
    )
    flat[:n_grad] *= weight
    try:
        dist.all_reduce(flat)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _failed(exc) from exc
    total = float(flat[n_grad + len(means)])
    scaled = flat[: n_grad + len(means)]
    if total > 0:
        scaled /= total
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(p).to(p.dtype)
        offset += g.numel()
    reduced = flat[n_grad:].tolist()
    return (
        dict(zip(means, reduced[: len(means)], strict=True)),
        dict(zip(sums, reduced[len(means) + 1 :], strict=True)),
    )


def broadcast_json(value: Any, world: World) -> Any:
    """Rank 0's JSON-able ``value`` on every rank (as UTF-8 bytes: nothing is unpickled)."""
    data = json.dumps(value).encode() if world.is_main else b""
    try:
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, 0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if world.is_main else None
        if buf is None:
            buf = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, 0)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _failed(exc) from exc
    return json.loads(bytes(buf.tolist()).decode()) if not world.is_main else value


def broadcast_tensors(tensors: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors on every rank (names, shapes and dtypes sent as JSON first)."""
    spec = broadcast_json(
        [[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in tensors.items()]
        if world.is_main
        else None,
        world,
    )
    out: dict[str, torch.Tensor] = {}
    try:
        for name, shape, dtype in spec:
            # On CPU whatever the device: every rank creates the same kind of tensor (gloo).
            t = tensors[name].detach().cpu().contiguous() if world.is_main else None
            if t is None:
                t = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(t, 0)
            out[name] = t
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _failed(exc) from exc
    return out


class _GatherRows(torch.autograd.Function):
    """All ranks' rows of a (n_r, D) tensor, concatenated in rank order, with a gradient.

    Every rank computes the same loss on the gathered rows, so the gradient each rank receives
    for the gathered tensor is the same everywhere: the backward takes this rank's rows of it,
    scaled by the number of ranks with rows, because the gradient average over those ranks
    (a rank without rows weighs 0) divides it again.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        width = max(sizes)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in sizes]
        try:
            dist.all_gather(gathered, padded)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise _failed(exc) from exc
        ctx.rank, ctx.sizes = rank, sizes
        return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = sum(ctx.sizes[: ctx.rank])
        contributing = sum(1 for n in ctx.sizes if n)
        return grad[start : start + ctx.sizes[ctx.rank]] * contributing, None, None


def gather_rows(rows: torch.Tensor, sizes: list[int], world: World) -> torch.Tensor:
    """See :class:`_GatherRows`; ``sizes``: every rank's row count (known from the batch)."""
    if not world.parallel:
        return rows
    return _GatherRows.apply(rows, sizes, world.rank)


def leave() -> None:
    """Leave the process group (a worker process runs many jobs, each with its own group)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
