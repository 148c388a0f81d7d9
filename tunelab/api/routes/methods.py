"""The tuning methods this server offers, each with its config's JSON schema.

The schema carries every parameter's type, bounds, default, description and label, and which
parameters a form shows first (``x-form``, tunelab/configs/form.py), so a client (the Studio's
create form) builds its fields from it: a default is written once, on the config class
(tunelab/configs/). Methods, their titles, schemas and dataset roles (with the ``kind`` the
Studio checks each file as) come from the one method table (tunelab/jobs/methods.py), with
``aliases``: the other names a role is accepted under, ``{alias: role}`` (DPO takes its preference
pairs as ``train`` too), so a client can discover every name a job body may use.
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
                "title": spec.title or method,
                "description": spec.about,
                "config_schema": spec.config.model_json_schema(),
                "dataset_roles": [
                    {
                        "role": r.name,
                        "required": r.required,
                        "description": r.description,
                        "title": r.label,
                        "kind": r.kind,
                    }
                    for r in spec.dataset_roles
                ],
                "aliases": dict(spec.role_aliases),
            }
            for method, spec in METHODS.items()
        ]
    }
