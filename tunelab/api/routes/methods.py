"""The tuning methods this server offers, each with its config's JSON schema.

The schema carries every parameter's type, bounds, default and description, so a client (the
Studio's form) shows the real defaults without restating them: a default is written once, on
the config class (tunelab/configs/). Methods, schemas and dataset roles come from the one
method table (tunelab/jobs/methods.py).
"""

from __future__ import annotations

from fastapi import APIRouter

from tunelab.jobs.methods import METHODS

router = APIRouter(prefix="/v1/tuningMethods", tags=["tuning jobs"])


@router.get("")
def list_() -> dict:
    return {
        "tuning_methods": [
            {
                "method": method,
                "config_schema": spec.config.model_json_schema(),
                "dataset_roles": [
                    {"role": r.name, "required": r.required, "description": r.description}
                    for r in spec.dataset_roles
                ],
            }
            for method, spec in METHODS.items()
        ]
    }
