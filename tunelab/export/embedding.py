"""A tuned embedding model as a sentence-transformers folder: the encoder with its LoRA adapter
merged, the tokenizer, and the module list (Transformer -> Pooling -> Normalize) that makes
``SentenceTransformer(folder)`` pool exactly as TuneLab does (``tunelab.embeddings.model``).
Plain transformers loads it too (``AutoModel``), pooling by hand as ``1_Pooling`` says."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tunelab.export.source import ExportSource

logger = logging.getLogger(__name__)


def write_sentence_transformers(source: ExportSource, out: Path) -> list[Path]:
    from tunelab.embeddings.model import load_encoder

    encoder = load_encoder(source.bundle)  # the base with the adapter merged, as it is served
    encoder.model.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    spec, hidden = encoder.spec, encoder.hidden_size
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if spec.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (out / "2_Normalize").mkdir()
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": spec.mode == "cls",
                "pooling_mode_mean_tokens": spec.mode == "mean",
                "pooling_mode_max_tokens": spec.mode == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": spec.max_seq_length, "do_lower_case": False}) + "\n"
    )
    if encoder.dimensions and encoder.dimensions < hidden:
        logger.warning(
            "%s serves %d-dimensional vectors; the exported folder gives all %d (truncate and "
            "renormalise, e.g. SentenceTransformer(folder, truncate_dim=%d))",
            source.label,
            encoder.dimensions,
            hidden,
            encoder.dimensions,
        )
    return sorted(out.iterdir())
