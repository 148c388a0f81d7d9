"""Whether vLLM can serve a version is checked when the version is registered and stored with
it (``model_versions.vllm_check``); a version registered before the verdict was stored is
checked at its first view. Shown by ``GET /v1/tunedModels``, ``tunelab models list/show``."""

import json

import sqlalchemy as sa
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.registry.models import get_version, list_models, register_version


def adapter(folder, **config):
    """An adapter folder as far as the vLLM check reads it: its adapter_config.json."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none"} | config
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def register(services, name, folder, method="sft", store=True):
    return register_version(
        services.db,
        name=name,
        method=method,
        base_model="b",
        adapter_uri=str(folder),
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
        store=services.artifacts if store else None,
    )


def stored(services, name):
    """The column as the database holds it (not the object register_version returned)."""
    return get_version(services.db, name).vllm_check


def test_registration_stores_the_verdict_by_the_rules_no_server_setting_changes(services, tmp_path):
    register(services, "rank4", adapter(tmp_path / "a", r=4))
    assert stored(services, "rank4") == {
        "servable": True,
        "reasons": [],
        "rank": 4,
        "min_max_lora_rank": 8,
    }
    register(services, "dora", adapter(tmp_path / "b", r=32, use_dora=True))
    assert stored(services, "dora") == {
        "servable": False,
        "reasons": ["DoRA adapters (use_dora) are not supported by vLLM"],
        "rank": 32,
        "min_max_lora_rank": 32,
    }
    register(services, "scorer", adapter(tmp_path / "c"), method="reward_model")
    assert stored(services, "scorer")["reasons"] == [
        "a reward model scores answers with a scalar head; it does not generate"
    ]


def test_a_verdict_judged_against_a_servers_max_lora_rank(services, tmp_path):
    from tunelab.serving.vllm_compat import check_version

    v = register(services, "wide", adapter(tmp_path / "a", r=32))
    assert check_version(services, v).servable  # by the fixed rules: any server with >= 32
    on_16 = check_version(services, v, max_lora_rank=16)
    assert not on_16.servable
    assert on_16.reasons == [
        "rank 32 is above the server's --max-lora-rank 16 (start it with --max-lora-rank 32 or "
        "more)"
    ]
    assert check_version(services, v, max_lora_rank=32).servable
    assert stored(services, "wide")["servable"] is True  # the server's setting is not stored


def test_a_version_without_a_stored_verdict_is_checked_at_its_first_view_and_keeps_it(
    services, tmp_path
):
    from tunelab.serving.vllm_compat import check_version

    folder = adapter(tmp_path / "a", r=600)
    register(services, "late", folder, store=False)  # as a test or an old caller registers
    assert stored(services, "late") is None
    assert [m.vllm for m in list_models(services.db)] == [None]  # no store: not checked
    (summary,) = list_models(services.db, services.artifacts)
    assert summary.vllm["servable"] is False and "above 512" in summary.vllm["reasons"][0]
    assert stored(services, "late") == summary.vllm
    # Stored means stored: the view no longer reads the adapter.
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert not check_version(services, get_version(services.db, "late")).servable


def test_a_store_that_cannot_be_read_is_not_stored_as_the_adapters_fault(
    services, tmp_path, monkeypatch
):
    folder = adapter(tmp_path / "a")

    def outage(uri):
        raise OSError("the bucket is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(services.artifacts, "local_path", outage)
        v = register(services, "m", folder)  # registering does not fail on it
        assert stored(services, "m") is None
        (summary,) = list_models(services.db, services.artifacts)
        assert summary.vllm["reasons"] == [
            "the adapter could not be read from the artifact store to check it"
        ]
        assert stored(services, "m") is None  # checked again at the next view
    (summary,) = list_models(services.db, services.artifacts)
    assert summary.vllm["servable"] and stored(services, v.model_name)["rank"] == 8


def test_a_database_from_before_the_column_keeps_its_versions_and_checks_them(db_url, tmp_path):
    """A database at revision 0004 (versions without the verdict) upgrades; its version is
    checked at the first view."""
    from alembic import command
    from alembic.config import Config

    from tunelab.db.engine import MIGRATIONS, _make_engine, open_database
    from tunelab.registry.artifacts import ArtifactStore

    folder = adapter(tmp_path / "old", r=16)
    engine = _make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO tuned_models (name, created_at) VALUES ('old', CURRENT_TIMESTAMP)")
        )
        conn.execute(
            sa.text(
                "INSERT INTO artifacts (id, kind, uri, sha256, size_bytes, created_at) "
                "VALUES ('art-1', 'adapter', :uri, :sha, 1, CURRENT_TIMESTAMP)"
            ),
            {"uri": str(folder), "sha": "0" * 64},
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_versions (id, model_name, version, method, base_model, "
                "adapter_artifact_id, adapter_sha256, config, created_at) VALUES "
                "('mv-1', 'old', 1, 'sft', 'b', 'art-1', :sha, '{}', CURRENT_TIMESTAMP)"
            ),
            {"sha": "0" * 64},
        )
    engine.dispose()

    db = open_database(db_url)  # migrates to head
    assert get_version(db, "old").vllm_check is None
    (summary,) = list_models(db, ArtifactStore(str(tmp_path / "store")))
    assert summary.vllm == {"servable": True, "reasons": [], "rank": 16, "min_max_lora_rank": 16}
    assert get_version(db, "old").vllm_check == summary.vllm


def test_models_list_and_show_say_whether_vllm_serves_each_version(services, tmp_path):
    register(services, "plain", adapter(tmp_path / "a", r=4))
    register(services, "dora", adapter(tmp_path / "b", use_dora=True))
    runner = CliRunner()
    listing = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    rows = {line.split("│")[1].strip(): line for line in listing.output.splitlines() if "│" in line}
    assert "yes (--max-lora-rank ≥ 8)" in rows["plain"]
    assert rows["dora"].rstrip("│ ").endswith("no")
    shown = runner.invoke(app, ["models", "show", "dora"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "vLLM: not servable: DoRA adapters (use_dora) are not supported by vLLM" in shown.output
    as_json = runner.invoke(app, ["models", "show", "plain", "--json"])
    assert json.loads(as_json.output)["vllm"]["min_max_lora_rank"] == 8


def test_a_tuning_job_registers_its_version_with_the_verdict(services, tmp_path, tiny_model_dir):
    from support import color_rows, write_jsonl

    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker

    job, _ = submit_job(
        services.db,
        services.artifacts,
        name="tuned-rank2",
        datasets={"train": write_jsonl(tmp_path / "train.jsonl", color_rows(8))},
        config=SFTConfig(base_model=str(tiny_model_dir), train_steps=2, adapter_size=2),
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    assert stored(services, "tuned-rank2") == {
        "servable": True,
        "reasons": [],
        "rank": 2,
        "min_max_lora_rank": 8,
    }


def test_models_deploy_notes_a_version_no_vllm_server_can_serve(services, tmp_path):
    register(services, "plain", adapter(tmp_path / "a", r=4))
    register(services, "dora", adapter(tmp_path / "b", use_dora=True))
    runner = CliRunner()
    done = runner.invoke(app, ["models", "deploy", "dora"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert (
        "note: a server with --engine vllm cannot serve it: DoRA adapters (use_dora) are not "
        "supported by vLLM" in done.output
    )
    done = runner.invoke(app, ["models", "deploy", "plain"], env={"COLUMNS": "200"})
    assert done.exit_code == 0 and "note:" not in done.output
