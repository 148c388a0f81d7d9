"""Fixtures of the embedding tests: a tiny random BERT encoder with the real MiniLM tokenizer,
and small corpus / queries / labels files."""

import json

import pytest
from support import write_lines


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 32) saved as safetensors, with the tokenizer
    of all-MiniLM-L6-v2: a whole tuning run takes seconds on CPU."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.embeddings.model import resolve_embedding_model

    _, minilm = resolve_embedding_model("all-minilm-l6-v2")
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


@pytest.fixture
def small_data(tmp_path):
    """6 passages about 3 made-up systems, 12 queries naming each system by its acronym."""
    systems = [("Pelican", "PQS"), ("Marmot", "MDW"), ("Quokka", "QAG")]
    topics = [("access", "request access in the onboarding form"), ("outage", "page the on-call")]
    corpus, queries, labels = [], [], []
    for s, (codename, acronym) in enumerate(systems):
        for t, (topic, text) in enumerate(topics):
            corpus.append(
                {"_id": f"d{s}{t}", "title": f"{codename} {topic}", "text": f"{codename}: {text}"}
            )
            for n, q in enumerate([f"{acronym} {topic}", f"help with {acronym} {topic}"]):
                queries.append({"_id": f"q{s}{t}{n}", "text": q})
                labels.append(f"q{s}{t}{n}\td{s}{t}\t1")
    c = write_lines(tmp_path / "corpus.jsonl", [json.dumps(r) for r in corpus])
    q = write_lines(tmp_path / "queries.jsonl", [json.dumps(r) for r in queries])
    train = write_lines(tmp_path / "train.tsv", ["query-id\tcorpus-id\tscore", *labels[:9]])
    test = write_lines(tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", *labels[9:]])
    return {"corpus": c, "queries": q, "train_labels": train, "test_labels": test}
