"""Which key scope each route needs: one ordered table, read top to bottom, first match wins.

A route is matched by its HTTP method and its path *template* (``/v1/tunedModels/{name}``), so
the table names routes the way the code declares them. A route no rule names needs ``admin``:
a new route is closed to narrower keys until someone decides otherwise here (and the test over
every route of the app fails until its expected scope is written down).
"""

from __future__ import annotations

import re

ANY = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
READ = frozenset({"GET", "HEAD"})
VERTEX = r"/v1/projects/[^/]+/locations/[^/]+"

RULES: tuple[tuple[frozenset[str], re.Pattern[str], str], ...] = tuple(
    (methods, re.compile(pattern), scope)
    for methods, pattern, scope in (
        # inference: call models, and see which there are to call
        (
            frozenset({"POST"}),
            r".*:(predict|rawPredict|generateContent|streamGenerateContent)",
            "inference",
        ),
        (frozenset({"POST"}), r"/v1/(chat/completions|completions|embeddings)", "inference"),
        (READ, r"/v1/models(/.*)?", "inference"),
        (READ, r"/v1/endpoints(/[^/:]+)?", "inference"),
        # Vertex's resource paths: the SDK reads the endpoint or model it is about to call
        (READ, VERTEX + r"/(endpoints|models|publishers/[^/]+/models)(/[^/:]+)?", "inference"),
        (READ, r"/v1/keys/me", "inference"),
        (READ, r"/openapi\.json", "inference"),
        # tune: datasets, tuning jobs, reading the registry
        (ANY, r"/v1/datasets(/.*)?", "tune"),
        (READ, r"/v1/embeddingData/validation", "tune"),
        (ANY, r"/v1/tuningJobs(/.*)?", "tune"),
        (READ, r"/v1/tuningMethods", "tune"),
        (READ, r"/v1/tunedModels(/.*)?", "tune"),
        # exporting a tuned model reads it, as the registry's GETs do
        (frozenset({"POST"}), r"/v1/tunedModels/[^/]+:export", "tune"),
        # promoting a kept checkpoint adds a version, as a tuning job does (deploying it is admin)
        (frozenset({"POST"}), r"/v1/tunedModels/[^/]+/checkpoints/[^/]+:promote", "tune"),
        (READ, r"/v1/exports/[^/]+", "tune"),
        # OpenAI's fine-tuning API: its files are datasets and its jobs are tuning jobs
        (ANY, r"/v1/files(/.*)?", "tune"),
        (ANY, r"/v1/fine_tuning/jobs(/.*)?", "tune"),
        # admin: deploy (POST /v1/endpoints), undeploy, moving or removing an alias (it changes
        # what `name@alias` serves), delete, and anything not listed above
    )
)


def required_scope(method: str, path_template: str) -> str:
    for methods, pattern, scope in RULES:
        if method.upper() in methods and pattern.fullmatch(path_template):
            return scope
    return "admin"
