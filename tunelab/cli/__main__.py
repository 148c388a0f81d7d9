"""``python -m tunelab.cli`` runs the same CLI as the ``tunelab`` command."""

from tunelab.cli import app

app()
