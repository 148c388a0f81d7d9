"""The one model-reference resolver, the tuned-model name rule and the operator's base models:
what each reference resolves to, what is refused (and at which face), and that a request string
never reaches the disk."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models.names import InvalidModelName
from tunelab.registry.endpoints import deploy_version, endpoint_id_for
from tunelab.registry.models import register_version
from tunelab.registry.names import check_tuned_model_name
from tunelab.registry.resolve import ModelNotFound, resolve

runner = CliRunner()


def _register(services, name, base="smollm2-135m-instruct"):
    return register_version(
        services.db,
        name=name,
        method="sft",
        base_model=base,
        adapter_uri=f"adapters/{name}",
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )


@pytest.mark.parametrize(
    "name", ["router", "ticket-router_2.v1", "A", "x" * 128, "smollm2-135m-instruct-tuned"]
)
def test_valid_tuned_model_names(name):
    assert check_tuned_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "a/b",
        "org/model",
        "x@1",
        "x@latest",
        "..",
        ".hidden",
        "-flag",
        "with space",
        "tab\tname",
        "~",
        "smollm2-135m-instruct",  # a base model's name: it would take the base's place
        "all-minilm-l6-v2",
        "ep-0123456789abcdef",  # an endpoint id's form
    ],
)
def test_invalid_tuned_model_names_are_refused_everywhere(services, name):
    with pytest.raises(InvalidModelName):
        check_tuned_model_name(name)
    with pytest.raises(InvalidModelName):
        _register(services, name)


def test_resolves_tuned_versions_endpoints_and_servable_bases(services):
    v1 = _register(services, "router")
    v2 = _register(services, "router")
    # `router` means its default alias, which the first version took: registering v2 (a job
    # that did not deploy it) does not change what `router` names
    assert resolve(services, "router").version.id == v1.id
    assert resolve(services, "router@default").version.id == v1.id
    assert resolve(services, "router@2").version.id == v2.id
    assert resolve(services, "router@1").version.id == v1.id
    deploy_version(services.db, v1.id)
    by_endpoint = resolve(services, endpoint_id_for("router"))
    assert by_endpoint.kind == "tuned" and by_endpoint.version.id == v1.id
    base = resolve(services, "smollm2-135m-instruct")
    assert (base.kind, base.base_model, base.adapter_dir) == ("base", "smollm2-135m-instruct", None)
    with pytest.raises(ModelNotFound, match="has no version 3"):
        resolve(services, "router@3")
    for alias in ("router@latest", "router@", "router@1@1"):  # no such aliases
        with pytest.raises(ModelNotFound):
            resolve(services, alias)


def test_request_references_never_touch_the_disk(services, tiny_model_dir, monkeypatch):
    """A folder, ~, a hub id or a relative path is not found, without a single filesystem
    lookup of the string (Path.is_dir / exists are never asked about it)."""
    asked = []
    for method in ("is_dir", "exists", "is_file", "expanduser"):
        original = getattr(Path, method)

        def spy(self, *a, _original=original, **k):
            asked.append(str(self))
            return _original(self, *a, **k)

        monkeypatch.setattr(Path, method, spy)
    refs = [str(tiny_model_dir), "~", "~/x", "org/model", "../etc", "./tiny", "a\\b"]
    for ref in refs:
        with pytest.raises(ModelNotFound) as refused:
            resolve(services, ref)
        assert str(Path.home()) not in str(refused.value)
    assert not [a for a in asked if any(r.lstrip("./~") and r in a for r in refs)], asked


def test_operator_bases_add_list_remove(services, tiny_model_dir, tmp_path):
    _register(services, "taken")
    result = runner.invoke(app, ["models", "add-base", "tiny", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "tunelab-home" / "base_models.json").read_text())
    assert stored == {"bases": {"tiny": str(tiny_model_dir.resolve())}}
    target = resolve(services, "tiny")
    assert target.kind == "base" and target.base_model == "tiny"
    listed = runner.invoke(app, ["models", "list-bases"])
    assert "tiny" in listed.output and "smollm2-135m-instruct" in listed.output

    for args, says in (
        (["a/b", str(tiny_model_dir)], "not valid"),
        (["smollm2-135m-instruct", str(tiny_model_dir)], "catalog base model"),
        (["taken", str(tiny_model_dir)], "name of a tuned model"),
        (["empty", str(tmp_path)], "no config.json"),
        (["nowhere", str(tmp_path / "missing")], "neither a model folder nor a hub id"),
    ):
        refused = runner.invoke(app, ["models", "add-base", *args])
        assert refused.exit_code == 1 and says in " ".join(refused.output.split()), refused.output
    with pytest.raises(InvalidModelName, match="base model"):
        check_tuned_model_name("tiny")  # an added base's name is taken too

    assert runner.invoke(app, ["models", "remove-base", "tiny"]).exit_code == 0
    with pytest.raises(ModelNotFound):
        resolve(services, "tiny")
    assert runner.invoke(app, ["models", "remove-base", "tiny"]).exit_code == 1


def test_base_names_win_over_a_tuned_model_registered_before_the_rule(services):
    """A tuned model named like a base (possible before names were checked) never takes the
    base's place."""
    from tunelab.db.schema import Artifact, ModelVersion, TunedModel

    with services.db.session() as s:
        s.add(TunedModel(name="smollm2-135m-instruct"))
        s.add(Artifact(id="art-old", kind="adapter", uri="x", sha256="0" * 64, size_bytes=1))
        s.flush()
        s.add(
            ModelVersion(
                id="mv-old",
                model_name="smollm2-135m-instruct",
                version=1,
                method="sft",
                base_model="smollm2-135m-instruct",
                adapter_artifact_id="art-old",
                adapter_sha256="0" * 64,
                config={},
            )
        )
    assert resolve(services, "smollm2-135m-instruct").kind == "base"


@pytest.mark.parametrize(
    "command",
    [
        ["tune", "sft", "--train", "{train}", "--name", "{name}"],
        ["tune", "dpo", "--preference", "{train}", "--name", "{name}"],
        [
            "tune",
            "embedding",
            "--corpus",
            "{train}",
            "--queries",
            "{train}",
            "--train-labels",
            "{train}",
            "--name",
            "{name}",
        ],
        ["jobs", "submit", "--train", "{train}", "--name", "{name}"],
    ],
)
@pytest.mark.parametrize("name", ["a/b", "x@1", "smollm2-135m-instruct"])
def test_cli_refuses_bad_names_before_submitting(services, tmp_path, command, name):
    train = tmp_path / "t.jsonl"
    train.write_text('{"input_text": "a", "output_text": "b"}\n')
    args = [a.format(train=train, name=name) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "--name" in result.output and name in result.output
    from tunelab.jobs import store

    assert store.list_jobs(services.db, None, 10) == []
