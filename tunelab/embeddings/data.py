"""Vertex's embedding-tuning data: a corpus, queries and relevance labels, validated together.

    corpus.jsonl    {"_id": "doc-1", "title": "optional", "text": "the passage"}
    queries.jsonl   {"_id": "q-1", "text": "the query"}
    train.tsv       query-id <TAB> corpus-id <TAB> score      (header line first, as written)
    test.tsv        the same (optional; without it a seeded 80/20 split of the training queries)

Every bad line is reported at once with its file and line number (:class:`LineError`, as the
supervised formats do): unreadable or malformed lines, missing or mistyped fields, duplicate ids,
a missing or wrong TSV header, non-numeric or negative scores, duplicate (query, passage) pairs,
and label ids that the corpus or the queries do not have. Files are streamed through
:func:`tunelab.data.reader.iter_lines`, so an oversized line is rejected without being held.

A score of 0 marks a judged non-relevant passage (kept for NDCG, never a positive to train on);
scores above 0 are graded relevance.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.reader import ReadError, iter_lines
from tunelab.data.validation import LineError

LABEL_HEADER = ("query-id", "corpus-id", "score")
MAX_ERRORS = 1000


class EmbeddingDataError(ValueError):
    """One or more of the files has errors; ``errors`` lists them (file, line, field, reason)."""

    def __init__(self, errors: list[LineError], shown: int = 20) -> None:
        self.errors = errors
        listed = [f"  {e}" for e in errors[:shown]]
        if len(errors) > shown:
            listed.append(f"  ... and {len(errors) - shown} more")
        plural = "s" if len(errors) != 1 else ""
        super().__init__(
            f"{len(errors)} error{plural} in the embedding data:\n" + "\n".join(listed)
        )


@dataclass
class EmbeddingData:
    """The validated files: texts by id and labels as ``{query_id: {corpus_id: score}}``."""

    corpus: dict[str, tuple[str, str]]
    """corpus id -> (title, text)."""
    queries: dict[str, str]
    train: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    test_from_split: bool = False
    """True when the test labels are the held-out 20% of the training queries."""
    sha256: dict[str, str] = field(default_factory=dict)
    reload: tuple[str, tuple, dict] | None = field(default=None, repr=False, compare=False)
    """(function, args, kwargs) that loads these data again: how another training process of
    the same job gets them (tunelab.training.launch)."""

    def passage(self, corpus_id: str) -> str:
        title, text = self.corpus[corpus_id]
        return passage_text(title, text)

    def train_pairs(self) -> list[tuple[str, str]]:
        """(query id, corpus id) for every positive label (score > 0), in a stable order."""
        return [
            (q, c)
            for q in sorted(self.train)
            for c, score in sorted(self.train[q].items())
            if score > 0
        ]

    def stats(self) -> dict[str, Any]:
        def count(labels: dict[str, dict[str, float]]) -> dict[str, int]:
            return {
                "queries": len(labels),
                "labels": sum(len(v) for v in labels.values()),
                "positives": sum(1 for v in labels.values() for s in v.values() if s > 0),
            }

        return {
            "corpus": len(self.corpus),
            "queries": len(self.queries),
            "train": count(self.train),
            "validation": count(self.validation),
            "test": count(self.test),
            "test_from_split": self.test_from_split,
            "sha256": self.sha256,
        }


def passage_text(title: str | None, text: str) -> str:
    """What the encoder reads for a passage: the title, if any, on its own line before the text."""
    return f"{title}\n{text}" if title else text


def load_embedding_data(
    corpus: Path,
    queries: Path,
    train_labels: Path,
    test_labels: Path | None = None,
    validation_labels: Path | None = None,
    *,
    seed: int = 42,
    test_fraction: float = 0.2,
) -> EmbeddingData:
    """Read and cross-check every file; raise :class:`EmbeddingDataError` listing all problems."""
    errors: list[LineError] = []
    hashes: dict[str, str] = {}
    corpus_rows = _read_jsonl(Path(corpus), ("_id", "text"), ("title",), errors, hashes)
    query_rows = _read_jsonl(Path(queries), ("_id", "text"), (), errors, hashes)
    docs = {cid: (row.get("title") or "", row["text"]) for cid, row in corpus_rows.items()}
    texts = {qid: row["text"] for qid, row in query_rows.items()}
    paths = {"train": train_labels, "test": test_labels, "validation": validation_labels}
    labels = {}
    for role, path in paths.items():
        if path is None:
            continue
        labels[role] = _read_labels(Path(path), docs, texts, errors, hashes)
        positives = any(s > 0 for v in labels[role].values() for s in v.values())
        if not positives and not _has_errors_for(errors, str(path)):
            errors.append(
                LineError(0, "no_positive_labels", None, "no label has a score above 0", str(path))
            )
    if errors:
        raise EmbeddingDataError(errors)
    train, test = labels["train"], labels.get("test")
    from_split = test is None
    if test is None:
        train, test = split_labels(train, seed=seed, test_fraction=test_fraction)
    return EmbeddingData(
        corpus=docs,
        queries=texts,
        train=train,
        test=test,
        validation=labels.get("validation", {}),
        test_from_split=from_split,
        sha256=hashes,
        reload=(
            f"{__name__}:load_embedding_data",
            (corpus, queries, train_labels, test_labels, validation_labels),
            {"seed": seed, "test_fraction": test_fraction},
        ),
    )


def split_labels(
    labels: dict[str, dict[str, float]], *, seed: int, test_fraction: float = 0.2
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Hold out ``test_fraction`` of the *queries* (with all their labels), chosen by a seeded
    shuffle: splitting by query, not by label, keeps test queries unseen in training."""
    ids = sorted(labels)
    random.Random(seed).shuffle(ids)
    n_test = max(1, round(len(ids) * test_fraction)) if len(ids) > 1 else 0
    test_ids = set(ids[:n_test])
    train = {q: v for q, v in labels.items() if q not in test_ids}
    test = {q: v for q, v in labels.items() if q in test_ids}
    return train, test


# ---------------------------------------------------------------------------- readers


def _read_jsonl(
    path: Path,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    errors: list[LineError],
    hashes: dict[str, str],
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    name = str(path)

    def err(line: int, code: str, fld: str | None, message: str) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(LineError(line, code, fld, message, file=name))

    if not path.is_file():
        err(0, "missing_file", None, "file does not exist")
        return rows
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for number, text in iter_lines(fh, on_bytes=digest.update):
            if isinstance(text, ReadError):
                err(number, text.code, None, text.message)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                err(
                    number, "invalid_json", None, f"not valid JSON: {exc.msg} at column {exc.colno}"
                )
                continue
            if not isinstance(obj, dict):
                err(number, "not_an_object", None, "each line must be a JSON object")
                continue
            bad = False
            for key in required:
                if key not in obj:
                    err(number, "missing_field", key, "required field is missing")
                    bad = True
            for key in required + optional:
                value = obj.get(key)
                if key not in obj or (key in optional and value is None):
                    continue
                if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
                    obj[key] = value = str(value)  # BEIR files sometimes carry numeric ids
                if not isinstance(value, str):
                    err(number, "wrong_type", key, f"must be a string, got {type(value).__name__}")
                    bad = True
                elif key in required and not value.strip():
                    err(number, "empty", key, "must not be empty")
                    bad = True
            if bad:
                continue
            doc_id = obj["_id"]
            if doc_id in first_line:
                err(
                    number,
                    "duplicate_id",
                    "_id",
                    f"{doc_id!r} already on line {first_line[doc_id]}",
                )
                continue
            first_line[doc_id] = number
            rows[doc_id] = obj
    hashes[name] = digest.hexdigest()
    if not rows and not _has_errors_for(errors, name):
        err(0, "empty_file", None, "no records")
    return rows


def _read_labels(
    path: Path,
    corpus: dict[str, Any],
    queries: dict[str, Any],
    errors: list[LineError],
    hashes: dict[str, str],
) -> dict[str, dict[str, float]]:
    labels: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    name = str(path)

    def err(line: int, code: str, fld: str | None, message: str) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(LineError(line, code, fld, message, file=name))

    if not path.is_file():
        err(0, "missing_file", None, "file does not exist")
        return labels
    digest = hashlib.sha256()
    header_seen = False
    with open(path, "rb") as fh:
        for number, text in iter_lines(fh, on_bytes=digest.update):
            if isinstance(text, ReadError):
                err(number, text.code, None, text.message)
                header_seen = True
                continue
            cells = [c.strip() for c in text.rstrip("\r\n").split("\t")]
            if not header_seen:
                header_seen = True
                if tuple(c.lower() for c in cells) != LABEL_HEADER:
                    err(
                        number,
                        "bad_header",
                        None,
                        f"the first line must be the header {'<TAB>'.join(LABEL_HEADER)!r}, "
                        f"got {text.strip()[:80]!r}",
                    )
                    if len(cells) != 3 or _number(cells[2]) is None:
                        continue  # a wrong header: skip it; otherwise it was data, check it
                else:
                    continue
            if len(cells) != 3:
                err(
                    number,
                    "wrong_column_count",
                    None,
                    f"expected 3 tab-separated columns, got {len(cells)}",
                )
                continue
            qid, cid, raw_score = cells
            score = _number(raw_score)
            bad = False
            if score is None:
                err(number, "invalid_score", "score", f"{raw_score[:40]!r} is not a number")
                bad = True
            elif score < 0:
                err(number, "negative_score", "score", f"{raw_score} is negative")
                bad = True
            if qid not in queries:
                err(number, "unknown_query", "query-id", f"{qid[:80]!r} is not in the queries file")
                bad = True
            if cid not in corpus:
                err(number, "unknown_corpus_id", "corpus-id", f"{cid[:80]!r} is not in the corpus")
                bad = True
            if bad:  # a bad line is reported once, not again as a duplicate of a later fix
                continue
            if (qid, cid) in first_line:
                err(
                    number,
                    "duplicate_label",
                    None,
                    f"({qid!r}, {cid!r}) already on line {first_line[(qid, cid)]}",
                )
                continue
            first_line[(qid, cid)] = number
            labels.setdefault(qid, {})[cid] = float(score)
    hashes[name] = digest.hexdigest()
    if not header_seen:
        err(0, "empty_file", None, "no header and no labels")
    return labels


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _has_errors_for(errors: list[LineError], name: str) -> bool:
    return any(e.file == name for e in errors)
