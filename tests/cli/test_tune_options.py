"""``tunelab tune <method>`` is generated from the method table: one command per method, an
option per dataset role and per config field, each with the field's default and description
from the config's JSON schema, so a field added to a config (``accelerator``, ``workers``...)
is a CLI option with no code in the CLI."""

import json
from types import SimpleNamespace
from typing import Literal

import pytest
import typer
from pydantic import Field
from typer.main import get_command
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.cli import tune as tune_cli
from tunelab.configs import SFTConfig
from tunelab.jobs.methods import METHODS, DatasetRole, MethodSpec

runner = CliRunner()


def _tune_group():
    return get_command(app).commands["tune"]


def _options(command):
    """{flag: click option} of a click command, every one of its flags."""
    return {flag: p for p in command.params for flag in (*p.opts, *p.secondary_opts)}


def _schema_text(value):
    """The option's default as the CLI shows and parses it: the text of the schema default."""
    return value if value is None or isinstance(value, str) else json.dumps(value)


def test_there_is_one_tune_command_per_method_of_the_table():
    assert list(_tune_group().commands) == list(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_config_field_is_an_option_with_the_schema_default_and_help(method):
    spec = METHODS[method]
    options = _options(_tune_group().commands[method])
    schema = spec.config.model_json_schema()
    properties, required = schema["properties"], set(schema.get("required", []))
    assert "method" in properties  # the one field that is not an option: the command names it
    for field, prop in properties.items():
        if field == "method":
            continue
        flag = "--base" if field == "base_model" else "--" + field.replace("_", "-")
        assert flag in options, f"tune {method}: no {flag} for config field {field}"
        option = options[flag]
        assert option.required == (field in required), (method, field)  # rft's grader is
        if not option.required:
            boolean = prop.get("type") == "boolean"  # a --x/--no-x flag: its default is a bool
            expected = prop.get("default") if boolean else _schema_text(prop.get("default"))
            assert option.default == expected, (method, field)
        assert (prop.get("description") or "") in option.help, (method, field)
    for role in spec.dataset_roles:
        option = options["--" + role.name.replace("_", "-")]
        assert option.required == role.required and option.help == role.description
    assert {"--name", "--detach", "--restart", "--base-model"} <= set(options)


def test_the_options_that_scripts_and_the_readme_use_still_exist():
    group = _tune_group()
    used = {  # from README.md, examples/ and the tests that run these commands
        "sft": "--train --validation --name --base --epochs --train-steps "
        "--learning-rate-multiplier --adapter-size --batch-size --max-seq-length --seed "
        "--eval-every-steps --checkpoint-every-steps --early-stopping-patience --precision "
        "--detach --restart",
        "rlhf": "--preference --prompts --eval --name --base --reward-model-train-steps "
        "--reward-model-learning-rate-multiplier --reinforcement-learning-train-steps "
        "--reinforcement-learning-rate-multiplier --kl-coeff --prompt-sequence-length "
        "--target-sequence-length --instruction --adapter-size --prompts-per-step "
        "--samples-per-prompt --checkpoint-every-steps --seed",
        "dpo": "--preference --validation --name --base --init-adapter --beta --epochs "
        "--train-steps --learning-rate-multiplier --adapter-size --batch-size "
        "--prompt-sequence-length --target-sequence-length --eval-every-steps "
        "--checkpoint-every-steps --seed",
        "embedding": "--corpus --queries --train-labels --test-labels --validation-labels "
        "--name --base --train-steps --batch-size --learning-rate-multiplier "
        "--output-dimensionality --adapter-size --max-seq-length --seed",
    }
    for method, flags in used.items():
        assert set(flags.split()) <= set(_options(group.commands[method])), method


class _WithNewFields(SFTConfig):
    """A config as the device and process work extends it: its new fields need no CLI code."""

    method: Literal["grown"] = "grown"
    shards: int = Field(1, ge=1, le=64, description="Data shards.")
    weights: list[int] | None = Field(None, description="A weight per shard.")
    compile: bool = Field(False, description="torch.compile the model.")


@pytest.fixture
def grown(monkeypatch, tmp_path):
    """`tune grown` on a method with new config fields; submitting is captured, not run."""
    spec = MethodSpec(_WithNewFields, (DatasetRole("train", "Rows.", required=True),), "x", ())
    tune_app = typer.Typer()
    tune_cli.add_method_commands(tune_app, {"grown": spec, "sft": METHODS["sft"]})
    submitted = []

    def fake_submit(services, config, name, datasets, idempotency_key):
        submitted.append((config, name, datasets, idempotency_key))
        return SimpleNamespace(id="job-1"), True

    monkeypatch.setattr(tune_cli, "submit", fake_submit)
    monkeypatch.setattr(tune_cli, "_services", lambda: None)
    train = tmp_path / "train.jsonl"
    train.write_text('{"input_text": "a", "output_text": "b"}\n')

    def invoke(*args):
        return runner.invoke(tune_app, [*args, "--train", str(train), "--name", "m", "--detach"])

    return invoke, submitted


def test_new_config_fields_are_options_that_reach_the_config(grown):
    invoke, submitted = grown
    result = invoke("grown", "--accelerator", "cpu", "--weights", "[0, 1]", "--shards", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("job-1")
    config = submitted[-1][0]
    assert isinstance(config, _WithNewFields)
    assert (config.accelerator, config.weights, config.shards) == ("cpu", [0, 1], 2)
    assert config.compile is False and config.batch_size == 8  # the schema's defaults

    assert invoke("grown", "--weights", "2", "--compile").exit_code != 0  # not a list
    assert invoke("grown", "--devices", "2", "--compile").exit_code == 0
    assert (submitted[-1][0].devices, submitted[-1][0].compile) == ("2", True)
    assert invoke("grown", "--devices", "none", "--no-compile").exit_code == 0
    assert (submitted[-1][0].devices, submitted[-1][0].compile) == (None, False)


def test_old_spellings_keep_working(grown):
    invoke, submitted = grown
    assert (
        invoke("sft", "--base-model", "some-base", "--early-stopping-patience", "0").exit_code == 0
    )
    assert submitted[-1][0].base_model == "some-base"
    assert submitted[-1][0].early_stopping_patience is None  # 0 has always meant "off"
    assert invoke("sft", "--base", "other-base", "--epochs", "2").exit_code == 0
    assert (submitted[-1][0].base_model, submitted[-1][0].epochs) == ("other-base", 2)


def test_bad_values_of_any_type_are_reported_together(grown):
    invoke, submitted = grown
    result = invoke("grown", "--shards", "many", "--accelerator", "tpu", "--batch-size", "0")
    assert result.exit_code == 1 and not submitted
    for flag in ("--shards", "--accelerator", "--batch-size"):
        assert flag in result.output
    result = invoke("sft", "--epochs", "2", "--train-steps", "5")
    assert result.exit_code == 1 and "give epochs or train_steps, not both" in result.output


def test_same_inputs_make_the_same_idempotency_key(grown):
    invoke, submitted = grown
    invoke("grown", "--shards", "2")
    invoke("grown", "--shards", "2")
    invoke("grown", "--shards", "3")
    keys = [s[3] for s in submitted]
    assert keys[0] == keys[1] != keys[2]
