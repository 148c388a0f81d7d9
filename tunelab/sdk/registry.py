"""A tuned model's versions, aliases and deployments, shaped like Vertex's ``ModelRegistry``
(``aiplatform.models.ModelRegistry``): ``add_version_aliases``, ``remove_version_aliases``,
``list_versions``, plus ``deploy`` / ``undeploy`` on the model's endpoint.

    registry = ModelRegistry("ticket-router")
    registry.add_version_aliases(["prod"], version=2)   # "ticket-router@prod" now names v2
    registry.deploy(version=2, traffic_percentage=10)   # v2 answers 10% of the endpoint's calls
    registry.undeploy(version=1)                        # v1 is no longer served
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tunelab.sdk.client import client


class ModelRegistry:
    def __init__(self, model: str) -> None:
        self.model = model

    def _path(self, suffix: str = "") -> str:
        return f"/v1/tunedModels/{quote(self.model, safe='')}{suffix}"

    def list_versions(self) -> list[dict[str, Any]]:
        """Each version with its ``aliases``, ``deployment`` (endpoint and traffic share, or
        None) and ``deploy_note`` (why its job deployed it or not)."""
        return client().request("GET", self._path())["versions"]

    def add_version_aliases(self, new_aliases: list[str], version: int | str) -> None:
        """Point each alias at ``version`` (moving it from the version it named before)."""
        for alias in new_aliases:
            client().request(
                "PUT",
                self._path(f"/aliases/{quote(alias, safe='')}"),
                json={"version": int(version)},
            )

    def remove_version_aliases(
        self, target_aliases: list[str], version: int | str | None = None
    ) -> None:
        """Remove user aliases (``default`` can only be moved). ``version`` is accepted for
        Vertex's signature; an alias names one version, so it is not needed."""
        for alias in target_aliases:
            client().request("DELETE", self._path(f"/aliases/{quote(alias, safe='')}"))

    def deploy(
        self, version: int | str | None = None, traffic_percentage: int | None = None
    ) -> dict[str, Any]:
        """Deploy a version (a number or an alias; the default version when None) on the
        model's endpoint; its share of the endpoint's traffic (all of it when None)."""
        ref = self.model if version is None else f"{self.model}@{version}"
        body: dict[str, Any] = {"model": ref}
        if traffic_percentage is not None:
            body["traffic_percentage"] = traffic_percentage
        return client().request("POST", "/v1/endpoints", json=body)

    def undeploy(self, version: int | str) -> dict[str, Any]:
        """Stop serving a version (a number or an alias) at once."""
        ref = f"{self.model}@{version}"
        endpoint = self.deploy_endpoint()
        return client().request("POST", f"/v1/endpoints/{endpoint}:undeploy", json={"model": ref})

    def deploy_endpoint(self) -> str:
        """The id of the model's endpoint (it exists once a version was deployed)."""
        for endpoint in client().request("GET", "/v1/endpoints")["endpoints"]:
            if endpoint["display_name"] == self.model:
                return endpoint["id"]
        raise LookupError(f"tuned model {self.model!r} has never been deployed")
