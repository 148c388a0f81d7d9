from fastapi import APIRouter

from tunelab import __version__

router = APIRouter()


@router.get("/health", tags=["health"])
def health() -> dict:
    """Liveness, without authentication (the one route that needs no key)."""
    return {"status": "ok", "version": __version__}
