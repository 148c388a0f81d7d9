"""TuneLab: self-hosted tuning of open language models, shaped like Vertex AI model tuning.

The package is laid out along the path of the data (see DESIGN.md):
``data`` (JSONL formats, validation, templating) -> ``models`` (base-model catalog) ->
``recipes`` (one file per training method, using ``training`` mechanics and ``losses`` maths)
-> adapter bundle -> ``serving`` (generation) -> ``cli``.
"""

import os

__version__ = "0.1.0"

# transformers >= 5.25 "kernelizes" every model it loads by default: on .train()/.eval() it swaps
# layers' forwards for kernels fetched from the Hugging Face Hub. That is code downloaded at run
# time (TuneLab loads nothing it did not ship or the user did not name), and it silently undid
# TuneLab's fused LoRA training forward, so "bf16" runs trained in fp32. Off unless the user
# turns it on explicitly.
os.environ.setdefault("USE_HUB_KERNELS", "NO")


def init(url: str | None = None, api_key: str | None = None) -> None:
    """Connect the SDK to a TuneLab server (see :mod:`tunelab.sdk`)."""
    from tunelab.sdk.client import init as _init

    _init(url=url, api_key=api_key)


# The SDK's public names, importable as ``from tunelab import TextGenerationModel`` (as the README
# shows). Loaded on first use (PEP 562), so ``import tunelab`` stays light for the server and CLI.
_SDK_NAMES = {
    "ChatModel",
    "ChatSession",
    "ModelRegistry",
    "SupervisedTuningJob",
    "TextEmbeddingModel",
    "TextGenerationModel",
    "TextGenerationResponse",
    "TuneLabError",
    "TuningJob",
}


def __getattr__(name: str):
    if name in _SDK_NAMES:
        import tunelab.sdk

        return getattr(tunelab.sdk, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
