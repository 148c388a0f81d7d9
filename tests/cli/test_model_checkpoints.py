"""``tunelab tune sft --keep-checkpoints``, ``tunelab models checkpoints`` (a Rich table of the
kept checkpoints with their metrics) and ``tunelab models promote``."""

import pytest
from support import color_rows, write_jsonl
from typer.testing import CliRunner

from tunelab.cli import app


@pytest.fixture
def db_url(tmp_path):
    """SQLite only: the store's PostgreSQL behaviour is covered by the store tests."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def test_keep_list_and_promote_from_the_command_line(services, tmp_path, tiny_model_dir):
    from tunelab.registry.models import get_version

    runner = CliRunner()
    tuned = runner.invoke(
        app,
        [
            "tune", "sft",
            "--train", str(write_jsonl(tmp_path / "train.jsonl", color_rows(16))),
            "--validation", str(write_jsonl(tmp_path / "val.jsonl", color_rows(4, offset=200))),
            "--name", "cli-ckpt",
            "--base", str(tiny_model_dir),
            "--train-steps", "12",
            "--batch-size", "8",
            "--eval-every-steps", "4",
            "--checkpoint-every-steps", "4",
            "--early-stopping-patience", "0",
            "--keep-checkpoints", "1",
        ],
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    version = get_version(services.db, "cli-ckpt")
    assert version.config["keep_checkpoints"] == 1

    listing = runner.invoke(app, ["models", "checkpoints", "cli-ckpt"], env={"COLUMNS": "240"})
    assert listing.exit_code == 0, listing.output
    rows = [line.split("│") for line in listing.output.splitlines() if line.count("│") > 5]
    steps = [cells[1].strip() for cells in rows if cells[1].strip().isdigit()]
    best = version.metrics["best_step"]
    assert steps == sorted({str(best), "12"}, key=int)  # the last one, and the best
    final_row = next(cells for cells in rows if cells[1].strip() == str(best))
    assert "final" in final_row[-2] and "cli-ckpt@checkpoint-" in final_row[-3]
    assert "eval rouge_l" in listing.output  # the in-job evaluation's headline metric

    # `tunelab eval` (and predict) take a checkpoint by the same reference.
    from tunelab.evaluation.model_refs import resolve_model_ref
    from tunelab.registry.checkpoints import version_checkpoints

    ref = resolve_model_ref("cli-ckpt@checkpoint-12")
    last = version_checkpoints(services.db, version)[-1]
    assert ref.kind == "tuned" and ref.adapter_dir == services.artifacts.local_path(
        last.adapter["uri"]
    )

    promoted = runner.invoke(app, ["models", "promote", "cli-ckpt", "--step", "12"])
    assert promoted.exit_code == 0, promoted.output
    assert "cli-ckpt@2" in promoted.output
    # (`cli-ckpt` alone is its default version, still 1: promoting does not deploy)
    assert get_version(services.db, "cli-ckpt@2").metrics["checkpoint"]["step"] == 12

    missing = runner.invoke(app, ["models", "promote", "cli-ckpt", "--step", "3"])
    assert missing.exit_code != 0 and "no kept checkpoint at step 3" in missing.output
