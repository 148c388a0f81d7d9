"""Training precision: ``auto`` follows what this machine measures, a bf16 run learns and is
evaluated and saved in fp32, a resumed run keeps the precision it started with, and models the
fused path does not cover get bf16 through autocast."""

import json

import pytest
import torch
from peft import PeftModel
from test_sft import tiny_config

from tunelab.data.validation import load_supervised
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.recipes.sft import train_sft
from tunelab.training import fast_path, precision
from tunelab.training.eval_loss import evaluate
from tunelab.training.precision import resolve_precision
from tunelab.training.run import TrainingInterrupted


def measured(monkeypatch, speedup: float) -> None:
    """Pretend this machine's bf16 matmuls run ``speedup`` times its fp32 ones."""
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda width: speedup)


def test_auto_takes_bf16_only_where_it_is_clearly_faster(monkeypatch):
    measured(monkeypatch, 2.4)  # e.g. AMD Zen 4
    assert resolve_precision("auto", 576) == "bf16"
    measured(monkeypatch, 1.2)  # a gain within timing noise is not worth bf16's rounding
    assert resolve_precision("auto", 576) == "fp32"
    measured(monkeypatch, 0.6)  # e.g. a Xeon with AVX512-BF16 but no AMX
    assert resolve_precision("auto", 576) == "fp32"
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda width: pytest.fail("probed"))
    assert resolve_precision("fp32", 576) == "fp32"  # an explicit choice measures nothing
    assert resolve_precision("bf16", 576) == "bf16"


def test_the_probe_measures_real_matmuls():
    speedup = precision.bf16_matmul_speedup(64)
    assert 0.01 < speedup < 100
    assert precision.bf16_matmul_speedup(64) == speedup  # once per process: runs decide alike


def test_a_bf16_run_learns_and_its_adapter_evaluates_in_fp32(tmp_path, tiny_model_dir, color_data):
    train, val = color_data
    result = train_sft(tiny_config(tiny_model_dir, precision="bf16"), train, tmp_path / "run", val)
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["usage"]["precision"] == "bf16"
    assert (
        json.loads((result.adapter_dir / "tuning_config.json").read_text())["precision"] == "bf16"
    )
    # validation during training ran in fp32: the saved adapter, reloaded by PEFT, gives the
    # recorded best eval loss to fp32 accuracy
    tokenizer = load_tokenizer(result.adapter_dir)
    examples, _ = load_supervised(val, tokenizer, max_seq_length=1024)
    model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), result.adapter_dir)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    again = evaluate(model, decoder, head, examples, 8, tokenizer.pad_token_id)
    assert again["eval_loss"] == pytest.approx(result.best_eval_loss, rel=1e-5)


def test_a_resumed_run_keeps_the_precision_it_started_with(
    tmp_path, tiny_model_dir, color_data, monkeypatch
):
    train, _ = color_data
    config = tiny_config(tiny_model_dir, train_steps=6)
    measured(monkeypatch, 3.0)
    steps = iter(range(100))
    with pytest.raises(TrainingInterrupted):  # stop after 3 steps; a checkpoint is written
        train_sft(config, train, tmp_path / "run", should_stop=lambda: next(steps) >= 3)
    measured(monkeypatch, 0.5)  # the machine now measures differently (say, a busy neighbour)
    result = train_sft(config, train, tmp_path / "run")
    assert result.resumed_from_step == 3
    assert result.usage["precision"] == "bf16"


def test_models_without_the_fused_path_train_in_bf16_by_autocast(
    tmp_path, tiny_model_dir, color_data, monkeypatch
):
    train, _ = color_data
    monkeypatch.setattr(fast_path, "fuse_lora_for_training", lambda model, dtype: False)
    seen = []
    real_forward = fast_path.decoder_hidden

    def spying_forward(*args):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_forward(*args)

    monkeypatch.setattr(fast_path, "decoder_hidden", spying_forward)
    config = tiny_config(tiny_model_dir, precision="bf16", train_steps=16)
    result = train_sft(config, train, tmp_path / "run")
    assert seen and all(seen)
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows]
    assert sum(losses[-4:]) < sum(losses[:4])


@pytest.mark.parametrize("hub_kernels", ["NO", "YES"])
def test_a_bf16_run_computes_in_bf16(
    tmp_path, tiny_model_dir, color_data, monkeypatch, hub_kernels
):
    """bf16 changes what is learnt (rounding), so a bf16 run's adapter differs from the fp32
    run's. Regression: transformers 5.25 "kernelizes" a model on ``.train()`` by default, which
    put back the layers' own forwards, so "bf16" runs trained in fp32 and gave the fp32 adapter
    bit for bit. TuneLab turns that off; with it forced on, the fast path reinstalls itself."""
    from safetensors.torch import load_file

    monkeypatch.setenv("USE_HUB_KERNELS", hub_kernels)
    train, _ = color_data
    adapters = {}
    for precision_ in ("fp32", "bf16"):
        config = tiny_config(tiny_model_dir, precision=precision_, train_steps=3)
        result = train_sft(config, train, tmp_path / precision_)
        adapters[precision_] = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    differences = [
        (adapters["fp32"][name] - adapters["bf16"][name]).abs().max().item()
        for name in adapters["fp32"]
    ]
    assert max(differences) > 1e-6  # bf16 rounding reached the adapter
    assert max(differences) < 0.1  # and it is the same training


def test_tunelab_turns_off_hub_kernels_unless_asked(monkeypatch):
    import importlib
    import os

    import tunelab

    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    importlib.reload(tunelab)  # what importing it does
    assert os.environ["USE_HUB_KERNELS"] == "NO"
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")  # a user who asks for them gets them
    importlib.reload(tunelab)
    assert os.environ["USE_HUB_KERNELS"] == "YES"
