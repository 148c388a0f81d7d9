"""Bringing an existing PEFT LoRA adapter into the registry (``tunelab models import``).

The folder is checked before anything is stored: safetensors weights only (a pickle file is
never read), every ``target_modules`` entry names linear layers of the base model, and every
weight has the shape of the layer it adapts, read by the serving engine's own checked reader
(LoRA variants the engine cannot apply, such as DoRA, are refused by name). The adapter is then
stored as an ordinary adapter bundle (the base model's tokenizer and chat template unless the
folder brings its own, ``tuning_config.json`` naming the base, a manifest with sha256s) and
registered as the next version of NAME with lineage ``imported``, so it is served (deployed when
NAME has nothing deployed yet), exported and tuned further like any tuned model.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.db.schema import ModelVersion
from tunelab.registry.models import register_version
from tunelab.serving.adapters import CONFIG, WEIGHTS, AdapterError
from tunelab.training.atomic import write_json

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class AdapterImportError(ValueError):
    """The folder cannot be imported; the message says what is wrong and where."""


def import_adapter(services, folder: Path, *, name: str, base: str) -> ModelVersion:
    from tunelab.export.source import read_lora
    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model

    folder = Path(folder)
    if not NAME.match(name):
        raise AdapterImportError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    _check_files(folder)
    config = json.loads((folder / CONFIG).read_text())
    resolved = resolve_model(base)
    model = load_causal_lm(resolved.path)
    _check_targets(folder, config, model)

    import_id = "imp-" + uuid.uuid4().hex[:16]
    with tempfile.TemporaryDirectory(prefix=".import-") as tmp_name:
        tmp = Path(tmp_name)
        config["base_model_name_or_path"] = resolved.ref
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(folder / WEIGHTS, tmp / WEIGHTS)
        has_tokenizer = (folder / "tokenizer.json").is_file()
        load_tokenizer(folder if has_tokenizer else resolved.path).save_pretrained(tmp)
        tuning = {
            "method": "imported",
            "base_model": resolved.ref,
            "base_model_path": str(resolved.path),
            "adapter_size": int(config.get("r", 0)),
            "lora_alpha": config.get("lora_alpha"),
            "target_modules": config.get("target_modules"),
            "source_folder": folder.name,
            "tokenizer_from": "adapter folder" if has_tokenizer else "base model",
        }
        write_json(tmp / "tuning_config.json", tuning)
        write_json(
            tmp / MANIFEST,
            {
                "kind": "lora_adapter",
                "method": "imported",
                "base_model": resolved.ref,
                "tunelab_version": __version__,
                "import_id": import_id,
                "files": file_hashes(tmp),
            },
        )
        # The bundle is checked as the engine will load it (manifest, then every factor's
        # shape against the base model) before anything is stored or registered.
        try:
            factors = read_lora(tmp, model, folder.name)
        except AdapterError as exc:
            raise AdapterImportError(str(exc)) from None
        logger.info("importing %s: %d adapted layers on %s", folder, len(factors), resolved.ref)
        stored = services.artifacts.put_dir(tmp, f"imports/{import_id}/adapter")
    version = register_version(
        services.db,
        name=name,
        method="imported",
        base_model=resolved.ref,
        adapter_uri=stored.uri,
        adapter_sha256=stored.sha256,
        adapter_size=stored.size_bytes,
        config=tuning,
        data_stats=None,
        metrics=None,
        source_job_id=None,
        inputs=[("import", import_id, "imported")],
        store=services.artifacts,
    )
    _deploy_if_first(services, version)
    return version


def _deploy_if_first(services, version: ModelVersion) -> None:
    """An imported version is deployed when its model has nothing deployed (as a job's first
    version is); next to a deployed version it is registered only: there is no evaluation to
    say it is better."""
    from tunelab.registry.endpoints import deploy_version, deployed_version, endpoint_id_for

    current = deployed_version(services.db, endpoint_id_for(version.model_name))
    if current is None:
        deploy_version(services.db, version.id)
        note = "deployed: imported, and nothing was deployed on the endpoint"
    else:
        note = (
            f"not deployed: imported next to the deployed {current.model_name}@"
            f"{current.version}; deploy it with `tunelab models deploy "
            f"{version.model_name}@{version.version}`"
        )
    with services.db.session() as s:
        s.get(ModelVersion, version.id).deploy_note = note


def _check_files(folder: Path) -> None:
    if not folder.is_dir():
        raise AdapterImportError(f"{folder} is not a folder")
    if not (folder / CONFIG).is_file():
        raise AdapterImportError(f"{folder} is not a PEFT adapter: it has no {CONFIG}")
    if not (folder / WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt")
        )
        hint = f" (it has {', '.join(pickles)}: pickle, never loaded)" if pickles else ""
        raise AdapterImportError(
            f"{folder} has no {WEIGHTS}{hint}; adapters are imported from safetensors only "
            "(convert it with PEFT: model.save_pretrained(folder, safe_serialization=True))"
        )
    try:
        json.loads((folder / CONFIG).read_text())
    except ValueError as exc:
        raise AdapterImportError(f"{folder / CONFIG} is not valid JSON: {exc}") from None


def _check_targets(folder: Path, config: dict, model) -> None:
    """Every target module of the config names linear layers of the base model."""
    import torch

    targets = config.get("target_modules")
    if not targets:
        raise AdapterImportError(f"{folder / CONFIG} lists no target_modules")
    if isinstance(targets, str):  # a regex over module names, as PEFT allows
        return
    linear = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    unknown = sorted(t for t in targets if t.rsplit(".", 1)[-1] not in linear)
    if unknown:
        raise AdapterImportError(
            f"{folder / CONFIG}: target_modules {unknown} are not linear layers of the base "
            f"model (it has {sorted(linear)})"
        )
