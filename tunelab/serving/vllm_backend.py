"""``--engine vllm``: one vLLM server serves one base model and the deployed adapters tuned
from it, behind TuneLab's routes.

The inference pool asks this backend for the engine of a base (:meth:`VllmBackend.engine_for`),
whether a version may be deployed (:meth:`check_deployable`) and tells it when deployments
changed (:meth:`sync`): the only three hooks between vLLM and the rest of TuneLab. Either
TuneLab starts vLLM itself (``vllm_process.py``) or it is given the URL of a running one.

Deployments change in other processes too: the worker's deploy step, ``tunelab models deploy``
or ``undeploy`` against the same database. A watcher thread reads the deployed versions every
``sync_seconds`` and syncs vLLM when they changed, so a new version is loaded before its first
request and an undeployed one gives its place back. (A request for a deployed version that is
not loaded yet loads it at once; one for an undeployed version is refused by the registry
check on every request, whatever vLLM holds.)
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from sqlalchemy import select

from tunelab.serving.vllm_compat import VllmVerdict, check_version
from tunelab.serving.vllm_engine import VllmEngine, VllmError
from tunelab.serving.vllm_process import VllmOptions, VllmProcess

logger = logging.getLogger(__name__)

SYNC_SECONDS = 2.0
"""How often the watcher reads the deployments: one small query; a deploy from another process
reaches vLLM within this."""


class NotServableByVllm(ValueError):
    """A version vLLM cannot load (rank, DoRA, ...): deploying it is refused with the reasons."""

    def __init__(self, label: str, verdict: VllmVerdict):
        super().__init__(f"{label} cannot be served by vLLM: " + "; ".join(verdict.reasons))
        self.verdict = verdict


class VllmBackend:
    def __init__(
        self,
        services,
        base_ref: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        options: VllmOptions | None = None,
        log_path: Path | None = None,
        sync_seconds: float | None = SYNC_SECONDS,
    ):
        self.services = services
        self.base_ref = base_ref
        self.url = url
        self.api_key = api_key
        self.options = options or VllmOptions()
        self.log_path = log_path
        self.sync_seconds = sync_seconds
        """None: no watcher (deployments reach vLLM through :meth:`sync` only)."""
        self.process: VllmProcess | None = None
        self.engine: VllmEngine | None = None
        self.base_dir: Path | None = None
        self._sync_lock = threading.Lock()
        self._synced: tuple[frozenset[str], frozenset[str]] | None = None
        """(deployed version ids, adapters wanted in vLLM) at the last sync that settled."""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> VllmBackend:
        """Start vLLM (unless given a URL) and connect to it; then load the deployed adapters."""
        from tunelab.models import load_tokenizer
        from tunelab.registry.resolve import ModelTarget, base_folder

        self.base_dir = base_folder(
            ModelTarget(ref=self.base_ref, kind="base", base_model=self.base_ref)
        ).resolve()
        url, key = self.url, self.api_key
        if url is None:
            self.process = VllmProcess(self.base_dir, self.options, log_path=self.log_path)
            self.process.start()
            url, key = self.process.url, self.process.api_key
        try:
            self.engine = VllmEngine(
                url,
                self.base_dir,
                load_tokenizer(self.base_dir),
                base_ref=self.base_ref,
                adapter_folder=self.adapter_folder,
                api_key=key,
            )
        except BaseException:
            self.close()
            raise
        try:
            self.sync()
        except VllmError as exc:  # the server runs; the adapter is retried at its request
            logger.warning("not every deployed adapter loaded into vLLM: %s", exc)
        if self.sync_seconds is not None:
            self._watcher = threading.Thread(
                target=self._watch, name="tunelab-vllm-deployments", daemon=True
            )
            self._watcher.start()
        return self

    # -- the pool's hooks ------------------------------------------------------------------------
    def engine_for(self, base_dir: Path) -> VllmEngine:
        from tunelab.serving.pool import ModelNotAvailable

        if self.engine is None:
            raise ModelNotAvailable("the vLLM engine is not started")
        if Path(base_dir).resolve() != self.base_dir:
            raise ModelNotAvailable(
                f"this server's vLLM engine serves {self.base_ref} and the models tuned from it "
                "only"
            )
        return self.engine

    def check_deployable(self, version) -> None:
        """Raise :class:`NotServableByVllm` for a version of this base vLLM cannot load."""
        if not self._same_base(version):
            return  # served by no engine here: the deploy is a registry matter
        verdict = check_version(self.services, version, max_lora_rank=self.options.max_lora_rank)
        if not verdict.servable:
            raise NotServableByVllm(f"{version.model_name}@{version.version}", verdict)

    def sync(self) -> None:
        """Load every deployed, servable adapter of this base into vLLM; unload the rest."""
        from tunelab.db.schema import ModelVersion
        from tunelab.registry.models import adapter_artifact

        if self.engine is None:
            return
        with self._sync_lock:
            deployed_ids = self._deployed_ids()
            with self.services.db.session() as s:
                versions = [s.get(ModelVersion, i) for i in sorted(deployed_ids)]
            deployed: dict[str, Path] = {}
            for v in versions:
                if v is None or not self._same_base(v):
                    continue
                verdict = check_version(self.services, v, max_lora_rank=self.options.max_lora_rank)
                if not verdict.servable:
                    logger.warning(
                        "%s@%s is deployed but vLLM cannot serve it: %s",
                        v.model_name,
                        v.version,
                        "; ".join(verdict.reasons),
                    )
                    continue
                uri = adapter_artifact(self.services.db, v).uri
                deployed[v.id] = self.services.artifacts.local_path(uri)
            settled = (deployed_ids, frozenset(deployed))
            try:
                self.engine.sync_deployed(deployed)
            except VllmError as exc:
                # vLLM refused an adapter: not asked again until the deployments change. A
                # vLLM that did not answer (503) is tried again at the next look.
                if exc.status != 503:
                    self._synced = settled
                raise
            self._synced = settled

    def sync_if_changed(self) -> bool:
        """Sync when the deployed versions changed since the last sync, or vLLM holds an
        adapter the last sync did not want (one loaded by a request as it was undeployed)."""
        if self.engine is None:
            return False
        synced = self._synced
        if (
            synced is not None
            and self._deployed_ids() == synced[0]
            and self.engine.loaded_adapters <= synced[1]
        ):
            return False
        self.sync()
        return True

    def _deployed_ids(self) -> frozenset[str]:
        from tunelab.db.schema import Deployment

        with self.services.db.session() as s:
            return frozenset(s.scalars(select(Deployment.model_version_id).distinct()))

    def _watch(self) -> None:
        while not self._stop.wait(self.sync_seconds):
            try:
                if self.sync_if_changed():
                    logger.info("vLLM follows the deployments: holds %s", self._synced[1])
            except VllmError as exc:
                logger.warning("vLLM did not follow the deployments: %s", exc)
            except Exception:  # the watcher outlives a database hiccup; it logs and looks again
                logger.exception("reading the deployments for vLLM failed")

    def adapter_folder(self, key: str, bundle: Path) -> Path:
        """The PEFT folder vLLM loads for version ``key``: ``tunelab models export --format
        peft`` of it, written once into TuneLab's data folder under the version id (versions
        never change). A version vLLM cannot serve (deployed from another process, which does
        not know this server's ``--max-lora-rank``) is a 503 that says why, not a load vLLM
        refuses."""
        from tunelab.config import get_settings
        from tunelab.db.schema import ModelVersion
        from tunelab.export import export_model

        with self.services.db.session() as s:
            version = s.get(ModelVersion, key)
        if version is None:
            raise LookupError(f"no model version {key!r}")
        ref = f"{version.model_name}@{version.version}"
        verdict = check_version(self.services, version, max_lora_rank=self.options.max_lora_rank)
        if not verdict.servable:
            raise VllmError(
                503,
                f"{ref} is deployed, but this server's vLLM cannot serve it: "
                + "; ".join(verdict.reasons),
            )
        folder = get_settings().home / "vllm-adapters" / key
        if (folder / "adapter_config.json").is_file():
            return folder
        if folder.exists():  # an export that was interrupted: export_model wants it empty
            shutil.rmtree(folder)
        export_model(self.services, ref, "peft", folder)
        return folder

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
            self._watcher = None
        if self.engine is not None:
            self.engine.close(drain=False)
            self.engine = None
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _same_base(self, version) -> bool:
        from tunelab.registry.resolve import ModelNotFound, ModelTarget, base_folder

        try:
            folder = base_folder(
                ModelTarget(ref=version.base_model, kind="tuned", base_model=version.base_model)
            )
        except ModelNotFound:
            return False
        return folder.resolve() == self.base_dir
