"""Base models the operator made servable, besides the catalog: ``tunelab models add-base NAME
SOURCE`` names a local model folder (or a hub id) once, and from then on every face refers to
it by NAME. This is the only way a folder on the server's disk becomes servable: a request
names a model, it never gives a path.

The list is a setting of this machine (a folder path means nothing on another machine), kept in
``TUNELAB_HOME/base_models.json`` and written atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tunelab.config import get_settings
from tunelab.models.names import InvalidModelName, check_name_grammar

logger = logging.getLogger(__name__)

FILENAME = "base_models.json"


def _path() -> Path:
    return get_settings().home / FILENAME


def operator_bases() -> dict[str, str]:
    """name -> source (an absolute folder or a hub id) of every base the operator added."""
    path = _path()
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.get("bases", {}).items()}


def catalog_names() -> set[str]:
    """The names of the shipped base models (generative and embedding)."""
    from tunelab.configs.embedding import DEFAULT_EMBEDDING_MODEL
    from tunelab.models.catalog import CATALOG

    return set(CATALOG) | {DEFAULT_EMBEDDING_MODEL}


def servable_base_names() -> set[str]:
    """Every base model name a request may use: the catalog plus the operator's bases."""
    return catalog_names() | set(operator_bases())


def add_base(name: str, source: str, *, taken: set[str] = frozenset()) -> str:
    """Make ``source`` (a local model folder, checked now, or a hub id) servable as ``name``.

    ``taken`` holds names already meaning something else (tuned models). Returns the stored
    source (a folder becomes absolute, so the name means the same from any working directory).
    """
    from tunelab.models.catalog import HUB_ID, check_model_folder

    check_name_grammar(name, "base model name")
    if name in catalog_names():
        raise InvalidModelName(f"{name!r} is a catalog base model already")
    if name in taken:
        raise InvalidModelName(f"{name!r} is the name of a tuned model; choose another name")
    folder = Path(source).expanduser()
    if folder.is_dir():
        check_model_folder(folder)
        stored = str(folder.resolve())
    elif HUB_ID.match(source):
        stored = source
    else:
        raise FileNotFoundError(f"{source} is neither a model folder nor a hub id (org/name)")
    bases = operator_bases() | {name: stored}
    _write(bases)
    logger.info("base model %s added: %s", name, stored)
    return stored


def remove_base(name: str) -> None:
    bases = operator_bases()
    if name not in bases:
        raise KeyError(f"no base model {name!r} was added (see tunelab models bases)")
    del bases[name]
    _write(bases)


def _write(bases: dict[str, str]) -> None:
    from tunelab.training.atomic import write_json

    write_json(_path(), {"bases": dict(sorted(bases.items()))})
