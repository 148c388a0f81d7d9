"""The ``tunelab`` command line: verbs mapped to the same functions the API and SDK call.

Sub-commands live one module per noun (``data``, ``tune``, ``predict``); this module only wires
them together and sets up logging, so ``tunelab --help`` shows the whole surface.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from tunelab.cli import data as data_cli
from tunelab.cli import jobs as jobs_cli
from tunelab.cli import keys as keys_cli
from tunelab.cli import models as models_cli
from tunelab.cli import tune as tune_cli  # tune <method>, one per method of the method table
from tunelab.cli import tune_rft  # graders test
from tunelab.cli.evaluate import evaluate_cmd
from tunelab.cli.predict import predict
from tunelab.cli.serve import serve

app = typer.Typer(
    name="tunelab",
    help="Self-hosted tuning of open language models, shaped like Vertex AI model tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(tune_cli.app, name="tune")
app.add_typer(jobs_cli.app, name="jobs")
app.add_typer(models_cli.app, name="models")
app.command("worker")(jobs_cli.worker)
app.add_typer(keys_cli.app, name="keys")
app.add_typer(tune_rft.graders_app, name="graders")
app.command("serve")(serve)
app.command("predict")(predict)
app.command("eval")(evaluate_cmd)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        # Logs go to stderr so that machine-readable output (--json) on stdout stays clean.
        handlers=[
            RichHandler(
                console=Console(stderr=True), show_path=False, show_time=False, markup=False
            )
        ],
    )
    # Library chatter that users of a CLI do not need to see.
    import warnings

    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # deprecations inside peft/transformers
    # No "Loading weights" bars on every model load. Through the environment, read when
    # transformers is first imported, so that commands that never load a model (jobs, models,
    # keys, --help) do not import it: that alone takes seconds.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Run from inside another program that had already imported them, the variable comes too
    # late: switch the bars off in the loaded modules instead.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for noisy in ("alembic", "transformers", "peft", "urllib3", "filelock", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
