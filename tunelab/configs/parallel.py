"""How many processes train one job: the ``processes`` field every training config mixes in.

The same job spec trains in one process or in several (data parallel, tunelab.training.
distributed): the global batch (``batch_size``) is shared out between them and their gradients
averaged, so the result does not depend on ``processes``, only the speed does.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_PROCESSES = 64


class ParallelConfig(BaseModel):
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Training processes (data parallel, torch.distributed): the batch is "
        "split between them and their gradients averaged; the adapter is the same as with 1.",
    )
