"""The SDK's connection: ``init(url, api_key)`` once, then every SDK object uses it."""

from __future__ import annotations

import os
from typing import Any

import httpx


class TuneLabError(RuntimeError):
    """An API error: ``code``, ``message`` and ``details`` as the server sent them."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or {}


class Client:
    def __init__(self, url: str, api_key: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": response.text[:500]}
            raise TuneLabError(
                response.status_code,
                err.get("code", "error"),
                err.get("message", ""),
                err.get("details"),
            )
        return response.json()


_client: Client | None = None


def init(url: str | None = None, api_key: str | None = None) -> None:
    """Connect the SDK to a server (defaults: TUNELAB_URL, TUNELAB_API_KEY)."""
    global _client
    url = url or os.environ.get("TUNELAB_URL") or "http://127.0.0.1:8080"
    api_key = api_key or os.environ.get("TUNELAB_API_KEY")
    if not api_key:
        raise ValueError("an API key is required: tunelab.init(api_key=...) or TUNELAB_API_KEY")
    _client = Client(url, api_key)


def client() -> Client:
    if _client is None:
        init()
    return _client
