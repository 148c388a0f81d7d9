"""TuneLab: self-hosted tuning of open language models, shaped like Vertex AI model tuning.

The package is laid out along the path of the data (see DESIGN.md):
``data`` (JSONL formats, validation, templating) -> ``models`` (base-model catalog) ->
``recipes`` (one file per training method, using ``training`` mechanics and ``losses`` maths)
-> adapter bundle -> ``serving`` (generation) -> ``cli``.
"""

__version__ = "0.1.0"
