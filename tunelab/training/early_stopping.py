"""Keep the best evaluation and decide when to stop: after ``patience`` evaluations in a row
without a lower eval loss. The state lives in :class:`LoopState` so it survives a resume."""

from __future__ import annotations

from tunelab.training.checkpoint import LoopState


def record_eval(state: LoopState, eval_loss: float, patience: int | None) -> bool:
    """Update best/patience counters for an evaluation at ``state.step``; True if it is a new best.

    Sets ``state.stopped_early`` when patience runs out (never when ``patience`` is None).
    """
    if state.best_eval_loss is None or eval_loss < state.best_eval_loss:
        state.best_eval_loss, state.best_step = eval_loss, state.step
        state.evals_without_improvement = 0
        return True
    state.evals_without_improvement += 1
    if patience is not None and state.evals_without_improvement >= patience:
        state.stopped_early = True
    return False
