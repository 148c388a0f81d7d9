"""A job's usage, with every token count meaning what the data report means by the same name.

The recipes count ``tokens_seen``: every real token their batches carried (prompts and answers;
a DPO pair carries its prompt twice, once with each candidate). Reported as "trained tokens"
that said something else than the data report's trained tokens (the model turns' tokens, the
ones with a loss), and could exceed the billable tokens. So a job's usage says:

- ``billable_tokens``: the training set's tokens × the epochs run, as Vertex bills;
- ``trained_tokens``: the model turns' tokens × the epochs run (the data report's number, times
  the passes), never more than the billable tokens;
- ``processed_tokens``: every token the training batches carried, what throughput is made of.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import get_settings


def job_usage(recipe_usage: dict[str, Any], train_report: dict[str, Any]) -> dict[str, Any]:
    usage = dict(recipe_usage)
    usage["processed_tokens"] = usage.pop("trained_tokens", 0)
    total = train_report.get("total_tokens") or 0
    passes = usage.get("billable_tokens", 0) / total if total else 0.0
    usage["trained_tokens"] = round((train_report.get("trained_tokens") or 0) * passes)
    price = get_settings().price_per_1k_tokens
    usage["estimated_cost"] = (
        round(usage["billable_tokens"] / 1000 * price, 6)
        if price is not None and "billable_tokens" in usage
        else None
    )
    return usage
