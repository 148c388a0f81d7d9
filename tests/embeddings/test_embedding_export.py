"""Export of a tuned embedding model as a sentence-transformers folder. sentence-transformers is
not installed here, so the folder is read the way it would read it, with transformers alone:
``AutoModel`` + the pooling ``1_Pooling/config.json`` declares + ``2_Normalize``; the vectors
equal what TuneLab serves for the tuned model."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app as cli


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def test_merged_sentence_transformers_folder_embeds_as_tunelab(
    services, tiny_encoder_dir, small_data, tmp_path
):
    from transformers import AutoModel, AutoTokenizer

    from tunelab.embeddings.model import load_encoder
    from tunelab.export import ExportError, export_model
    from tunelab.registry.models import adapter_artifact, get_version

    args = ["tune", "embedding", "--name", "emb", "--base", str(tiny_encoder_dir)]
    for role, path in small_data.items():
        args += [f"--{role.replace('_', '-')}", str(path)]
    result = CliRunner().invoke(cli, [*args, "--train-steps", "4", "--batch-size", "4"])
    assert result.exit_code == 0, result.output

    out = export_model(services, "emb", "merged", tmp_path / "st").folder
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert not (out / "adapter_config.json").exists()

    texts = ["PQS access", "help with the Marmot outage please", "QAG"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModel.from_pretrained(out).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, C)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    version = get_version(services.db, "emb")
    bundle = services.artifacts.local_path(adapter_artifact(services.db, version).uri)
    served = load_encoder(bundle).encode(texts)
    torch.testing.assert_close(vectors, served, atol=1e-5, rtol=1e-5)
    base = load_encoder(str(tiny_encoder_dir)).encode(texts)
    assert (served - base).abs().max() > 1e-4  # the adapter is in the merged weights

    with pytest.raises(
        ExportError, match="embedding model: it exports as 'merged' .*not as 'gguf'"
    ):
        export_model(services, "emb", "gguf", tmp_path / "g")
