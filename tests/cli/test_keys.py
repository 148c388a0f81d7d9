"""``tunelab keys``: keys are created with a scope (admin unless told), listed with it."""

from typer.testing import CliRunner

from tunelab.cli import app


def test_keys_create_takes_a_scope_and_list_shows_it(services):
    from tunelab.auth import verify_key

    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "app", "--scope", "inference"])
    assert made.exit_code == 0, made.output
    secret = next(line for line in made.output.splitlines() if line.startswith("tl-"))
    assert verify_key(services.db, secret).scope == "inference"
    default = runner.invoke(app, ["keys", "create", "--name", "me"])
    own = next(line for line in default.output.splitlines() if line.startswith("tl-"))
    assert verify_key(services.db, own).scope == "admin"

    refused = runner.invoke(app, ["keys", "create", "--name", "x", "--scope", "root"])
    assert refused.exit_code != 0 and "inference" in refused.output

    listing = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "200"})
    rows = {line.split("│")[2].strip(): line for line in listing.output.splitlines() if "│" in line}
    assert "inference" in rows["app"] and "admin" in rows["me"]
    assert "x" not in rows
