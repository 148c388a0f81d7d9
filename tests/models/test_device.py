"""Accelerators: the ``accelerator``/``devices`` fields every config shares, what they resolve to
on a machine (played with a fake CUDA device count: CI has no GPU), and a run's model, batches and
optimizer state on the resolved device."""

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from tunelab.configs import RLHFConfig, SFTConfig
from tunelab.configs.compute import parse_devices
from tunelab.data.batching import Batch
from tunelab.jobs.methods import METHODS
from tunelab.models import device as device_module
from tunelab.models.device import (
    AcceleratorUnavailable,
    Placement,
    resolve_placement,
    to_device,
)
from tunelab.training.run import BatchOrder, TrainingRun


@pytest.fixture
def gpus(monkeypatch):
    """Play a machine with ``n`` CUDA devices: set_gpus(n)."""

    def set_gpus(n: int) -> None:
        monkeypatch.setattr(device_module, "cuda_device_count", lambda: n)

    return set_gpus


def test_every_method_config_has_the_compute_fields():
    for method, cls in ((m, spec.config) for m, spec in METHODS.items()):
        config = cls.model_construct()  # the defaults (rft's grader has none)
        assert (config.accelerator, config.devices) == ("auto", None), method
        schema = cls.model_json_schema()["properties"]
        assert schema["accelerator"]["enum"] == ["auto", "cpu", "cuda"], method
        assert "devices" in schema, method
    # the RLHF job's reward-model stage runs where the job asked
    stage = RLHFConfig(accelerator="cpu").reward_model()
    assert stage.accelerator == "cpu"


def test_devices_spelling():
    assert parse_devices("2") == 2
    assert parse_devices("0,1") == (0, 1)
    assert parse_devices("1,") == (1,)
    assert parse_devices(" 3 , 1 ") == (3, 1)
    for bad in ("0", "a", "0,0", "-1", "1;2", ",", "cuda:0"):
        with pytest.raises(ValueError):
            parse_devices(bad)


def test_bad_compute_fields_are_refused_naming_the_field():
    with pytest.raises(ValidationError) as err:
        SFTConfig(accelerator="gpu")
    assert err.value.errors()[0]["loc"] == ("accelerator",)
    with pytest.raises(ValidationError) as err:
        SFTConfig(devices="0,0")
    assert err.value.errors()[0]["loc"] == ("devices",)
    with pytest.raises(ValidationError, match="devices names CUDA devices"):
        SFTConfig(accelerator="cpu", devices="1")


def test_without_cuda_auto_and_cpu_resolve_to_the_cpu_and_cuda_is_refused(gpus):
    gpus(0)
    assert resolve_placement("auto").device == torch.device("cpu")
    assert resolve_placement("cpu").device == torch.device("cpu")
    with pytest.raises(AcceleratorUnavailable, match="accelerator 'cuda'") as err:
        resolve_placement("cuda")
    assert err.value.field == "accelerator"
    assert "use accelerator auto or cpu" in str(err.value)
    with pytest.raises(AcceleratorUnavailable) as err:
        resolve_placement("auto", "0,1")  # devices name GPUs: never silently the CPU
    assert err.value.field == "devices"


def test_with_cuda_auto_takes_it_and_devices_pick_which(gpus):
    gpus(2)
    assert resolve_placement("auto") == Placement("cuda", (0,))
    assert resolve_placement("auto").device == torch.device("cuda", 0)
    assert resolve_placement("cuda", "2") == Placement("cuda", (0, 1))
    assert resolve_placement("cuda", "1,").device == torch.device("cuda", 1)
    assert resolve_placement("cuda", "1,0").describe() == "cuda:1,0"
    assert resolve_placement("cpu") == Placement("cpu")  # asked for: kept
    with pytest.raises(AcceleratorUnavailable, match="asks for 3 CUDA devices; this machine has 2"):
        resolve_placement("cuda", "3")
    with pytest.raises(AcceleratorUnavailable, match="no CUDA device 5") as err:
        resolve_placement("auto", "0,5")
    assert err.value.field == "devices"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_this_machine_refuses_cuda():
    """No fake: the real question asked of torch on a machine without CUDA."""
    with pytest.raises(AcceleratorUnavailable, match="accelerator 'cuda'"):
        resolve_placement("cuda")


def test_to_device_moves_tensor_fields_and_keeps_the_rest():
    batch = Batch(
        input_ids=torch.ones(2, 3, dtype=torch.long), loss_mask=torch.ones(2, 3), tokens=6
    )
    assert to_device(batch, torch.device("cpu")) is batch  # already there: no copy
    moved = to_device(batch, torch.device("meta"))  # a device that is not the CPU, on any machine
    assert moved.input_ids.device.type == moved.loss_mask.device.type == "meta"
    assert moved.tokens == 6 and batch.input_ids.device.type == "cpu"


def _config(**compute):
    return SimpleNamespace(
        seed=3,
        base_model="none",
        warmup_ratio=0.0,
        checkpoint_every_steps=100,
        precision="fp32",
        **compute,
    )


@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_a_run_trains_on_the_resolved_device(tmp_path, gpus, accelerator):
    """cpu and auto (no CUDA here) resolve to the CPU: the weights, the batches and the
    optimizer's moments are there, and the usage says where the run ran."""
    gpus(0)
    run = TrainingRun(tmp_path, _config(accelerator=accelerator, devices=None))
    assert run.device == torch.device("cpu")
    model = run.place(torch.nn.Linear(4, 1))
    data = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    order = BatchOrder([1] * 8, batch_size=4, seed=3)
    run.start(model, learning_rate=0.1, total_steps=2, order=order)
    for step in run.steps():
        batch = run.batch(data[order.at(step)])
        assert batch.device == run.device
        run.backward_and_step((model(batch) ** 2).mean())
    state = run.optimizer.state_dict()["state"]
    moments = [t for s in state.values() for k, t in s.items() if k != "step"]
    assert moments and all(t.device == run.device for t in moments)
    assert all(p.device == run.device for p in model.parameters())
    assert run.usage()["accelerator"] == "cpu"


def test_a_run_places_model_batches_and_optimizer_on_the_device_it_resolves(tmp_path, monkeypatch):
    """With a device that is not the CPU (meta: shapes without storage, on any machine) the run
    moves what the recipe gives it; nothing stays behind on the CPU."""
    monkeypatch.setattr(
        "tunelab.training.run.resolve_placement",
        lambda accelerator, devices: SimpleNamespace(
            device=torch.device("meta"), describe=lambda: "meta"
        ),
    )
    run = TrainingRun(tmp_path, _config(accelerator="cuda", devices=None))
    head = torch.nn.Linear(4, 1)
    trained = torch.nn.ModuleDict({"lm": run.place(torch.nn.Linear(4, 4)), "head": head})
    run.start(trained, learning_rate=0.1, total_steps=1, order=BatchOrder([1, 1], 2, 0))
    assert all(p.device.type == "meta" for p in trained.parameters())  # the head too
    assert all(p.device.type == "meta" for p in run.optimizer.param_groups[0]["params"])
    batch = run.batch(Batch(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2), 2))
    assert batch.input_ids.device.type == "meta"


def test_submit_refuses_cuda_where_there_is_none(services, gpus, tmp_path):
    from support import color_rows, write_jsonl

    from tunelab.jobs.store import list_jobs
    from tunelab.jobs.submit import submit_job

    gpus(0)
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(4))
    with pytest.raises(AcceleratorUnavailable) as err:
        submit_job(
            services.db,
            services.artifacts,
            config=SFTConfig(accelerator="cuda"),
            name="on-gpu",
            datasets={"train": train},
        )
    assert err.value.field == "accelerator"
    assert list_jobs(services.db) == []  # nothing queued
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=SFTConfig(accelerator="cpu"),
        name="on-cpu",
        datasets={"train": train},
    )
    assert job.config["accelerator"] == "cpu"  # the stored job spec says where it runs


def test_a_worker_without_the_gpu_a_job_asked_for_fails_it_at_once(
    services, gpus, tmp_path, tiny_model_dir
):
    """Submitted where CUDA was (played), run by a worker where it is not: the job fails with a
    permanent error naming the field, without retries (another attempt would fail alike)."""
    from support import color_rows, write_jsonl

    from tunelab.jobs import store
    from tunelab.jobs.submit import submit_job
    from tunelab.jobs.worker import Worker

    gpus(1)
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(8))
    config = SFTConfig(base_model=str(tiny_model_dir), train_steps=1, accelerator="cuda")
    job, _ = submit_job(
        services.db, services.artifacts, config=config, name="gpu-job", datasets={"train": train}
    )
    gpus(0)
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "FAILED"
    failed = store.get_job(services.db, job.id)
    assert failed.error["code"] == "accelerator_unavailable"
    assert failed.error["details"] == {"field": "accelerator"}
    assert failed.attempts == 1
