"""The Studio: TuneLab's web UI, one small single-page app in plain HTML, CSS and ES modules.

Everything it needs ships in ``static/`` (no build step, no CDN, no network at run time). The
pages and scripts are public; every API call they make carries the user's API key, so nothing
is readable without one. ``mount_studio`` serves ``/`` (the page) and ``/studio/*`` (assets).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
NO_CACHE = {"Cache-Control": "no-cache"}
"""Revalidate on every load, so an upgraded server never runs with stale scripts."""


class _Assets(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(NO_CACHE)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_studio(app: FastAPI) -> None:
    """Serve the Studio at ``/`` from the app that serves the API it calls."""

    @app.get("/", include_in_schema=False)
    def studio_index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    @app.get("/studio", include_in_schema=False)
    def studio_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/studio", _Assets(directory=STATIC), name="studio")
