"""The tuning methods this server offers, each with its config's JSON schema.

The schema carries every parameter's type, bounds, default and description, so a client (the
Studio's form) shows the real defaults without restating them: a default is written once, on
the config class (tunelab/configs/).
"""

from __future__ import annotations

from fastapi import APIRouter

from tunelab.configs import CONFIGS

router = APIRouter(prefix="/v1/tuningMethods", tags=["tuning jobs"])


@router.get("")
def list_() -> dict:
    return {
        "tuning_methods": [
            {"method": method, "config_schema": config.model_json_schema()}
            for method, config in CONFIGS.items()
        ]
    }
