"""The API reference behind the key: ``/openapi.json`` needs a key like every API route, and the
``/docs`` (Swagger UI) and ``/redoc`` pages are shells without data that fetch it with the key the
Studio holds in the browser tab (or one typed into the page), as the Studio's own pages do.

FastAPI's built-in versions of these routes answer anyone; the app turns them off. The schema
says nothing secret that the source does not, but an open route tells a scanner what runs here
and which version, and the README promises that every route but /health needs a key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from tunelab.studio import NO_CACHE, STATIC

schema_router = APIRouter(include_in_schema=False)
pages_router = APIRouter(include_in_schema=False)


@schema_router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@pages_router.get("/docs")
def swagger_page() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers=NO_CACHE)


@pages_router.get("/redoc")
def redoc_page() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers=NO_CACHE)
