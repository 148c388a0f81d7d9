"""Write the embedding-tuning example data: python examples/make_embedding_examples.py

Then tune on it:

    tunelab tune embedding --corpus examples/embedding/corpus.jsonl \
        --queries examples/embedding/queries.jsonl --train-labels examples/embedding/train.tsv \
        --test-labels examples/embedding/test.tsv --name acme-search

The domain: the internal wiki of a made-up company whose 15 systems are known by two names.
The wiki's pages call each system by its codename (``Pelican``), while engineers ask about it by
its acronym (``PQS``). Every system has a page on the same 10 topics, written from the same
templates, so a query's words find the right *topic* on 15 pages and nothing in them says which
of those 15 pages is the right *system*: the base model ranks them almost at random (NDCG@10
around 0.3), and only tuning can learn which acronym means which codename. Queries also
paraphrase the topic ("who pays for" for a page about cost centres), so word overlap helps less.

Relevance is graded: 2 for the page that answers the query, 1 for the same system's page on a
neighbouring topic (the on-call page for an outage question). Queries are split 80/20 into
train.tsv and test.tsv with a fixed seed, so the test queries are never trained on. Everything
is deterministic: running this script again writes the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "embedding"
SEED = 7

# (codename used on wiki pages, acronym used in questions, owning team)
SYSTEMS = [
    ("Pelican", "PQS", "payments"),
    ("Marmot", "MDW", "analytics"),
    ("Quokka", "QAG", "identity"),
    ("Heron", "HLP", "people"),
    ("Osprey", "OBS", "storage"),
    ("Wombat", "WBC", "developer tools"),
    ("Kestrel", "KSM", "security"),
    ("Lynx", "LNR", "observability"),
    ("Tapir", "TPE", "quality"),
    ("Ibis", "IBX", "finance"),
    ("Narwhal", "NWD", "network"),
    ("Gecko", "GFS", "machine learning"),
    ("Bison", "BDR", "reliability"),
    ("Civet", "CVR", "support"),
    ("Dingo", "DFF", "product"),
]

# topic -> (wiki page template, question templates); {C} codename, {A} acronym, {T} team
TOPICS = {
    "access": (
        "Access to {C}: file a request in the {C} onboarding form. The {T} lead approves new "
        "members within one business day and reviews the member list every quarter.",
        ["how do I get permission to use {A}", "who approves {A} membership requests"],
    ),
    "outage": (
        "{C} runbook for incidents: when {C} stops responding, page the on-call engineer through "
        "the incident bot, then fail over to the standby region and post in the status channel.",
        ["{A} is down what do I do first", "{A} unavailable, failover procedure"],
    ),
    "cost": (
        "{C} spending is charged to the {T} cost centre. Monthly spend is reviewed in the finance "
        "sync, and a rise of more than 20 percent over the previous month raises a budget alert.",
        ["who pays for {A}", "{A} budget overrun threshold"],
    ),
    "retention": (
        "{C} keeps records for 90 days, after which a nightly job purges them. Legal holds extend "
        "the period for specific records on request from the compliance office.",
        ["how long does {A} keep data", "when are old {A} records deleted"],
    ),
    "release": (
        "Changes to {C} ship with the Tuesday release train. A hotfix outside the train needs two "
        "approvals from the {T} team and must go through a canary first.",
        ["when can I deploy a change to {A}", "{A} emergency patch rules"],
    ),
    "oncall": (
        "{C} on-call duty rotates weekly among the {T} team. The handover happens on Monday at "
        "10:00, and the schedule is kept in the paging tool.",
        ["who looks after {A} at night", "{A} pager rotation schedule"],
    ),
    "limits": (
        "{C} throttles any client that sends more than 500 requests per second. To raise the "
        "ceiling, open a capacity ticket with the expected peak traffic.",
        ["{A} requests rejected with too many requests", "how to get a higher {A} rate limit"],
    ),
    "dashboards": (
        "{C} dashboards show latency, error rate and saturation for every region. Alerts from "
        "{C} are routed to its alerts channel and to the {T} mailing list.",
        ["where are the {A} health graphs", "which channel gets {A} alerts"],
    ),
    "deprecation": (
        "The version 1 interface of {C} is deprecated and will be switched off at the end of the "
        "quarter. Clients must move to version 2, which adds pagination.",
        ["is the old {A} API going away", "{A} legacy endpoint shutdown date"],
    ),
    "credentials": (
        "Services talk to {C} with short-lived tokens issued by the identity broker. Static keys "
        "for {C} are forbidden and are revoked automatically when found.",
        ["how do I authenticate to {A}", "can I use a permanent password for {A}"],
    ),
}
RELATED = {"outage": "oncall", "access": "credentials", "limits": "dashboards", "cost": "retention"}
"""A neighbouring page that partly answers a question on the first topic (relevance 1)."""

SECOND_QUESTION_SHARE = 1 / 3
"""Every page gets its first question; a third of them get the second one too (~200 queries)."""


def build() -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    rng = random.Random(SEED)
    corpus, queries, labels = [], [], []
    for s, (codename, acronym, team) in enumerate(SYSTEMS):
        for t, (topic, (page, questions)) in enumerate(TOPICS.items()):
            doc_id = f"doc-{s:02d}-{t:02d}"
            corpus.append(
                {
                    "_id": doc_id,
                    "title": f"{codename}: {topic}",
                    "text": page.format(C=codename, A=acronym, T=team),
                }
            )
            asked = questions[:1] + (questions[1:] if rng.random() < SECOND_QUESTION_SHARE else [])
            for n, question in enumerate(asked):
                query_id = f"q-{s:02d}-{t:02d}-{n}"
                queries.append({"_id": query_id, "text": question.format(A=acronym)})
                labels.append((query_id, doc_id, 2))
                if topic in RELATED:
                    related = list(TOPICS).index(RELATED[topic])
                    labels.append((query_id, f"doc-{s:02d}-{related:02d}", 1))
    return corpus, queries, labels


def split(labels, test_fraction: float = 0.2):
    query_ids = sorted({q for q, _, _ in labels})
    random.Random(SEED).shuffle(query_ids)
    test = set(query_ids[: round(len(query_ids) * test_fraction)])
    return [r for r in labels if r[0] not in test], [r for r in labels if r[0] in test]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_tsv(path: Path, rows) -> None:
    path.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{c}\t{s}\n" for q, c, s in rows)
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    corpus, queries, labels = build()
    train, test = split(labels)
    write_jsonl(OUT / "corpus.jsonl", corpus)
    write_jsonl(OUT / "queries.jsonl", queries)
    write_tsv(OUT / "train.tsv", train)
    write_tsv(OUT / "test.tsv", test)
    print(
        f"wrote {len(corpus)} passages, {len(queries)} queries, {len(train)} train and "
        f"{len(test)} test labels to {OUT}"
    )


if __name__ == "__main__":
    main()
