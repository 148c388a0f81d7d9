"""The one adapter check every load goes through (tunelab.bundle.verify_adapter_bundle): pickle
weights are refused saying only safetensors are accepted, and a file that differs from the
manifest's sha256 is refused naming the file, in the library, in ``tunelab predict``, in
evaluation and in serving."""

import json
import shutil

import pytest
from support import color_rows, write_jsonl
from typer.testing import CliRunner

from tunelab.bundle import (
    BundleIntegrityError,
    NotABundleError,
    sha256_file,
    verify_adapter_bundle,
)
from tunelab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A real adapter bundle, as the SFT recipe writes it (two steps on the tiny model)."""
    from tunelab.configs import SFTConfig
    from tunelab.recipes.sft import train_sft

    folder = tmp_path_factory.mktemp("sft")
    train = write_jsonl(folder / "train.jsonl", color_rows(16))
    config = SFTConfig(base_model=str(tiny_model_dir), train_steps=2, checkpoint_every_steps=2)
    return train_sft(config, train, folder / "run").adapter_dir


@pytest.fixture
def bundle(trained, tmp_path):
    """A fresh copy each test may damage."""
    return shutil.copytree(trained, tmp_path / "bundle")


def pickle_only(bundle):
    """The bundle with its weights as adapter_model.bin and no safetensors, as an attacker's
    folder would be: the bytes are never unpickled, only refused."""
    (bundle / "adapter_model.safetensors").rename(bundle / "adapter_model.bin")
    return bundle


def tamper(bundle):
    """One byte of the weights changed, the manifest left as it was."""
    weights = bundle / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return bundle


def test_an_intact_bundle_passes(bundle):
    manifest = verify_adapter_bundle(bundle)
    assert "adapter_model.safetensors" in manifest["files"]


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl"])
def test_pickle_weights_are_refused(bundle, suffix):
    (bundle / "adapter_model.safetensors").rename(bundle / f"adapter_model{suffix}")
    with pytest.raises(BundleIntegrityError, match="only safetensors are accepted"):
        verify_adapter_bundle(bundle)


def test_a_pickle_beside_safetensors_is_refused_too(bundle):
    (bundle / "adapter_model.bin").write_bytes(b"\x80\x04payload")
    with pytest.raises(BundleIntegrityError, match=r"adapter_model\.bin.*only safetensors"):
        verify_adapter_bundle(bundle)


def test_changed_missing_and_unlisted_files_are_refused_by_name(bundle):
    tamper(bundle)
    with pytest.raises(BundleIntegrityError, match="adapter_model.safetensors .*does not match"):
        verify_adapter_bundle(bundle)

    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "tokenizer.json").unlink()
    del manifest["files"]["adapter_model.safetensors"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="adapter_model.safetensors .*not listed"):
        verify_adapter_bundle(bundle)

    manifest["files"]["adapter_model.safetensors"] = sha256_file(
        bundle / "adapter_model.safetensors"
    )
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="tokenizer.json.* is missing"):
        verify_adapter_bundle(bundle)

    (bundle / "manifest.json").unlink()
    with pytest.raises(NotABundleError, match="no manifest.json"):
        verify_adapter_bundle(bundle)


def test_predict_refuses_a_pickle_only_folder_and_a_tampered_one(bundle, tmp_path, monkeypatch):
    import torch

    def never(*args, **kwargs):
        raise AssertionError("torch.load must never be reached")

    monkeypatch.setattr(torch, "load", never)
    pickled = pickle_only(shutil.copytree(bundle, tmp_path / "pickled"))
    result = runner.invoke(app, ["predict", "--model", str(pickled), "hi"])
    assert result.exit_code == 1
    assert "only safetensors are accepted" in " ".join(result.output.split())

    result = runner.invoke(app, ["predict", "--model", str(tamper(bundle)), "hi"])
    assert result.exit_code == 1
    assert "adapter_model.safetensors in adapter folder" in result.output
    assert "does not match its manifest.json" in " ".join(result.output.split())


def test_predict_runs_an_intact_bundle(bundle):
    result = runner.invoke(
        app,
        ["predict", "--model", str(bundle), "--temperature", "0", "--max-output-tokens", "2", "x"],
    )
    assert result.exit_code == 0, result.output


def test_eval_refuses_a_tampered_adapter(bundle, tmp_path, tiny_model_dir):
    from tunelab.evaluation.model_refs import resolve_model_ref

    tamper(bundle)
    with pytest.raises(BundleIntegrityError, match="adapter_model.safetensors"):
        resolve_model_ref(str(bundle))
    data = write_jsonl(tmp_path / "test.jsonl", color_rows(4))
    result = runner.invoke(app, ["eval", "--model", str(bundle), "--dataset", str(data)])
    assert result.exit_code == 1 and "does not match" in " ".join(result.output.split())


def test_serving_refuses_a_tampered_adapter_at_submit_and_at_load(bundle, tiny_model_dir):
    """At submit (a clear error at once), and again when the engine thread loads the weights:
    a file swapped between the two is still refused."""
    from tunelab.models import load_causal_lm
    from tunelab.serving.adapters import AdapterCache, AdapterError, check_adapter_folder

    check_adapter_folder(bundle, tiny_model_dir, label="adapter mv-1")
    cache = AdapterCache(load_causal_lm(tiny_model_dir))
    tamper(bundle)
    with pytest.raises(AdapterError, match="safetensors in adapter mv-1 does not match") as refused:
        check_adapter_folder(bundle, tiny_model_dir, label="adapter mv-1")
    assert str(bundle) not in str(refused.value)  # a server names the adapter, not its folder
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        cache.ensure("mv-1", bundle)
    assert len(cache) == 0
