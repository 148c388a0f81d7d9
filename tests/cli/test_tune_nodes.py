"""``tunelab tune <method> --nodes N``: what cannot work is refused before anything starts,
saying which option to change (the training across machines is tests/training/
test_data_parallel.py's)."""

import pytest
from support import color_rows, preference_rows, write_jsonl
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.configs import DPOConfig, RLHFConfig, SFTConfig

runner = CliRunner()


@pytest.fixture
def train(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", color_rows(4))


def tune(*args: str):
    return runner.invoke(app, ["tune", *args], env={"COLUMNS": "200"})


def test_several_machines_need_the_address_of_machine_0(train):
    out = tune("sft", "--train", str(train), "--name", "x", "--nodes", "2")
    assert out.exit_code == 1
    assert "nodes > 1 needs master_addr" in out.output


def test_a_node_rank_outside_the_machines_is_refused(train):
    out = tune(
        "sft", "--train", str(train), "--name", "x", "--nodes", "2", "--node-rank", "2",
        "--master-addr", "127.0.0.1",
    )  # fmt: skip
    assert out.exit_code == 1
    assert "--node-rank 2: machines are numbered 0..nodes-1" in out.output


def test_rlhf_on_several_machines_is_refused_as_a_follower_and_as_a_job(tmp_path, train):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(4))
    out = tune(
        "rlhf", "--preference", str(prefs), "--prompts", str(train), "--name", "x",
        "--nodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
    )  # fmt: skip
    assert out.exit_code == 1 and "rlhf trains on one machine" in out.output
    with pytest.raises(ValueError, match="rlhf trains on one machine"):
        RLHFConfig(nodes=2, master_addr="10.0.0.1")  # a REST job, too


def test_parallel_fields_fill_the_default_port_only_across_machines():
    assert SFTConfig(processes=2).parallel_fields() == {
        "processes": 2, "nodes": 1, "master_addr": None, "master_port": None,
    }  # fmt: skip
    fields = SFTConfig(nodes=3, master_addr="10.0.0.1").parallel_fields()
    assert (fields["nodes"], fields["master_addr"], fields["master_port"]) == (3, "10.0.0.1", 29500)
    with pytest.raises(ValueError, match="master_addr and master_port are for nodes > 1"):
        SFTConfig(master_port=29501)
    with pytest.raises(ValueError, match="init_adapter needs nodes 1"):
        DPOConfig(nodes=2, master_addr="10.0.0.1", init_adapter="parent@1")
