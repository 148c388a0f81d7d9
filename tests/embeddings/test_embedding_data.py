"""Embedding data validation: every error kind, each with its file, line and field."""

import json

import pytest
from support import write_lines

from tunelab.embeddings.data import (
    EmbeddingDataError,
    load_embedding_data,
    passage_text,
    split_labels,
)


def test_valid_files_load(small_data):
    data = load_embedding_data(**small_data)
    assert len(data.corpus) == 6 and len(data.queries) == 12
    assert data.train["q000"] == {"d00": 1.0}
    assert len(data.train_pairs()) == 9 and not data.test_from_split
    assert data.passage("d00") == "Pelican access\nPelican: request access in the onboarding form"
    assert passage_text("", "x") == "x"


def test_every_error_kind_with_file_and_line(tmp_path):
    corpus = write_lines(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"_id": "d1", "title": "T", "text": "one"}),
            json.dumps({"_id": "d1", "text": "again"}),  # 2 duplicate_id
            "{not json",  # 3 invalid_json
            json.dumps(["a list"]),  # 4 not_an_object
            json.dumps({"_id": "d2"}),  # 5 missing_field text
            json.dumps({"_id": "d3", "text": 7}),  # 6 wrong_type
            json.dumps({"_id": "d4", "text": "  "}),  # 7 empty
            json.dumps({"_id": 5, "text": "numeric ids are read as strings"}),  # 8 ok
        ],
    )
    queries = write_lines(
        tmp_path / "queries.jsonl",
        [json.dumps({"_id": "q1", "text": "x"}), json.dumps({"_id": "q1", "text": "y"})],
    )
    (tmp_path / "bad-utf8.jsonl").write_bytes(b'{"_id": "q", "text": "\xff"}\n')
    labels = write_lines(
        tmp_path / "train.tsv",
        [
            "query-id\tcorpus-id\tscore",
            "q1\td1\t1",
            "q1\td1\t2",  # 3 duplicate_label
            "q1\td1",  # 4 wrong_column_count
            "q1\t5\thigh",  # 5 invalid_score
            "q1\t5\t-1",  # 6 negative_score
            "q9\td1\t1",  # 7 unknown_query
            "q1\td9\t1",  # 8 unknown_corpus_id
        ],
    )
    no_header = write_lines(tmp_path / "test.tsv", ["q1\td1\t1"])
    with pytest.raises(EmbeddingDataError) as info:
        load_embedding_data(corpus, queries, labels, no_header)
    found = {(e.code, e.file.rsplit("/", 1)[-1], e.line, e.field) for e in info.value.errors}
    assert found == {
        ("duplicate_id", "corpus.jsonl", 2, "_id"),
        ("invalid_json", "corpus.jsonl", 3, None),
        ("not_an_object", "corpus.jsonl", 4, None),
        ("missing_field", "corpus.jsonl", 5, "text"),
        ("wrong_type", "corpus.jsonl", 6, "text"),
        ("empty", "corpus.jsonl", 7, "text"),
        ("duplicate_id", "queries.jsonl", 2, "_id"),
        ("duplicate_label", "train.tsv", 3, None),
        ("wrong_column_count", "train.tsv", 4, None),
        ("invalid_score", "train.tsv", 5, "score"),
        ("negative_score", "train.tsv", 6, "score"),
        ("unknown_query", "train.tsv", 7, "query-id"),
        ("unknown_corpus_id", "train.tsv", 8, "corpus-id"),
        ("bad_header", "test.tsv", 1, None),
    }
    message = str(info.value)
    assert "14 errors" in message and "train.tsv:6: score: -1 is negative" in message

    with pytest.raises(EmbeddingDataError) as info:
        load_embedding_data(corpus, tmp_path / "bad-utf8.jsonl", tmp_path / "missing.tsv")
    codes = {(e.code, e.line) for e in info.value.errors}
    assert ("invalid_utf8", 1) in codes and ("missing_file", 0) in codes


def test_labels_without_positives(small_data, tmp_path):
    zero = write_lines(tmp_path / "zero.tsv", ["query-id\tcorpus-id\tscore", "q000\td00\t0"])
    with pytest.raises(EmbeddingDataError) as info:
        load_embedding_data(small_data["corpus"], small_data["queries"], zero)
    assert [e.code for e in info.value.errors] == ["no_positive_labels"]


def test_seeded_split_by_query(small_data):
    data = load_embedding_data(
        small_data["corpus"], small_data["queries"], small_data["train_labels"]
    )
    assert data.test_from_split and len(data.test) == 2 and len(data.train) == 7
    assert not set(data.test) & set(data.train)
    again = split_labels({f"q{i}": {"d": 1.0} for i in range(10)}, seed=3)
    assert again == split_labels({f"q{i}": {"d": 1.0} for i in range(10)}, seed=3)
    assert len(again[1]) == 2
