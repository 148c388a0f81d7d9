"""TuneLab: self-hosted tuning of open language models, shaped like Vertex AI model tuning.

The package is laid out along the path of the data (see DESIGN.md):
``data`` (JSONL formats, validation, templating) -> ``models`` (base-model catalog) ->
``recipes`` (one file per training method, using ``training`` mechanics and ``losses`` maths)
-> adapter bundle -> ``serving`` (generation) -> ``cli``.
"""

__version__ = "0.1.0"


def init(url: str | None = None, api_key: str | None = None) -> None:
    """Connect the SDK to a TuneLab server (see :mod:`tunelab.sdk`)."""
    from tunelab.sdk.client import init as _init

    _init(url=url, api_key=api_key)
