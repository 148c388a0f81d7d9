"""``python -m tunelab`` runs the ``tunelab`` command line."""

from tunelab.cli import app

app()
