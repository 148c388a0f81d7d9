"""How many processes train one job, on how many machines: the fields every training config
mixes in.

The same job spec trains in one process or in several (data parallel, tunelab.training.
distributed): the global batch (``batch_size``) is shared out between them and their gradients
averaged, so the result does not depend on ``processes`` or ``nodes``, only the speed does.

With ``nodes`` > 1 the job runs on machine 0 as rank 0 and waits at ``master_addr:master_port``
for the other machines, each started with the same command and its ``--node-rank`` (a
command-line option, not a field: a job is always machine 0).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

MAX_PROCESSES = 64
MAX_NODES = 64
DEFAULT_MASTER_PORT = 29500
"""torchrun's default."""


class ParallelConfig(BaseModel):
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Training processes (data parallel, torch.distributed) on each machine: "
        "the batch is split between them and their gradients averaged; the adapter is the same "
        "as with 1.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Machines training the job, each running its processes; machine 0 runs "
        "the job, the others the same command with --node-rank 1..nodes-1.",
    )
    master_addr: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:\-\[\]]+$",
        description="With nodes > 1: the address of machine 0 (the job), where the others meet.",
    )
    master_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description=f"With nodes > 1: the port machine 0 listens on (default "
        f"{DEFAULT_MASTER_PORT}).",
    )

    @model_validator(mode="after")
    def _machines_meet_somewhere(self):
        if self.nodes > 1 and self.master_addr is None:
            raise ValueError("nodes > 1 needs master_addr: the address of machine 0")
        if self.nodes == 1 and (self.master_addr is not None or self.master_port is not None):
            raise ValueError(
                "master_addr and master_port are for nodes > 1 (one machine meets on a free local port)"
            )
        return self

    def parallel_fields(self) -> dict[str, Any]:
        """The fields as :func:`tunelab.training.launch.run_recipe` takes them."""
        port = self.master_port or (DEFAULT_MASTER_PORT if self.nodes > 1 else None)
        return {
            "processes": self.processes,
            "nodes": self.nodes,
            "master_addr": self.master_addr,
            "master_port": port,
        }
