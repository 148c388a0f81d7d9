"""Whether a tuned model may be registered under a name: the grammar of
:mod:`tunelab.models.names`, and no name that already means something else to a client (a
servable base model, an endpoint id). Checked at every face: CLI tune commands, REST job
submission (so the SDK too), ``submit_job`` and registry registration."""

from __future__ import annotations

from tunelab.models.bases import servable_base_names
from tunelab.models.names import NAME_RULE, InvalidModelName, check_name_grammar
from tunelab.registry.resolve import ENDPOINT_ID

__all__ = ["NAME_RULE", "InvalidModelName", "check_tuned_model_name"]


def check_tuned_model_name(name: str) -> str:
    """``name`` if a tuned model may take it, else :class:`InvalidModelName` saying why."""
    check_name_grammar(name)
    if name in servable_base_names():
        raise InvalidModelName(
            f"tuned model name {name!r} is the name of a base model this server serves; a tuned "
            "model must not take its place: choose another name"
        )
    if ENDPOINT_ID.match(name):
        raise InvalidModelName(
            f"tuned model name {name!r} has the form of an endpoint id (ep- and 16 hex digits)"
        )
    return name
