"""Writes examples/rft/{train,validation}.jsonl, the reinforcement fine-tuning example
(deterministic; rerunning rewrites the same bytes).

    python examples/make_rft_examples.py

Each prompt states a quantity in a sentence and asks for it as ``Answer: N``; the line's
``answer`` is the number the grader checks, ``reference`` an ideal answer (for the dry run).
Validation prompts use sentences the training prompts never use.

Every third training line carries an earlier exchange first: another training sentence, asked
the same way and answered ``Answer: M``, as a chat log would hold. SmolLM2-135M almost never
writes the format when asked once (0-1% of its sampled answers, so a group of samples rarely
holds a passing one and GRPO has nothing to learn from); after an earlier turn in the format it
passes about 40% of the time, and what the policy learns there carries over to the lines
without one. Validation lines have no earlier exchange: the held-out test is the harder case.
"""

import json
import random
from pathlib import Path

SENTENCES = [
    ("The parcel weighs {n} grams.", "How many grams does the parcel weigh?"),
    ("A train left the station with {n} passengers on board.", "How many passengers were on board?"),
    ("The library keeps {n} books on its shelves.", "How many books does the library keep?"),
    ("Our team answered {n} support tickets last week.", "How many tickets did the team answer?"),
    ("The orchard produced {n} apples this autumn.", "How many apples did the orchard produce?"),
    ("The bridge is {n} metres long.", "How long is the bridge, in metres?"),
    ("The stadium seats {n} people.", "How many people does the stadium seat?"),
    ("The recipe needs {n} grams of flour.", "How many grams of flour does the recipe need?"),
    ("The hikers walked {n} kilometres in total.", "How many kilometres did the hikers walk?"),
    ("The school enrolled {n} new students.", "How many new students did the school enroll?"),
    ("The server handled {n} requests per second at peak.", "How many requests per second at peak?"),
    ("The museum welcomed {n} visitors on Sunday.", "How many visitors came on Sunday?"),
    ("The farmer owns {n} sheep.", "How many sheep does the farmer own?"),
    ("The novel has {n} pages.", "How many pages does the novel have?"),
    ("The tank holds {n} litres of water.", "How many litres does the tank hold?"),
    ("The company hired {n} engineers this year.", "How many engineers were hired this year?"),
    ("The ship carried {n} containers.", "How many containers did the ship carry?"),
    ("The choir has {n} singers.", "How many singers does the choir have?"),
    ("The garden has {n} rose bushes.", "How many rose bushes are in the garden?"),
    ("The bakery sold {n} loaves today.", "How many loaves did the bakery sell today?"),
    ("The tower is {n} metres tall.", "How tall is the tower, in metres?"),
    ("The concert drew a crowd of {n}.", "How large was the crowd?"),
    ("The village is home to {n} residents.", "How many residents live in the village?"),
    ("The warehouse stores {n} pallets.", "How many pallets does the warehouse store?"),
]
ASK = "Reply with the number only, in the form 'Answer: <number>'."
HELD_OUT = 6
"""The last sentences are for validation only."""
EARLIER_EVERY = 3
"""Every third training line carries an earlier exchange answered in the format."""


def line(rng: random.Random, sentence: tuple[str, str]) -> dict:
    n = rng.randint(12, 9800)
    fact, question = sentence
    text = f"{fact.format(n=n)} {question} {ASK}"
    return {
        "messages": [{"role": "user", "content": text}],
        "answer": n,
        "reference": f"Answer: {n}",
    }


def with_earlier_exchange(rng: random.Random, row: dict, sentences: list) -> dict:
    """``row`` preceded by a question on another of ``sentences``, answered in the format."""
    own = row["messages"][0]["content"]
    fact, question = rng.choice([s for s in sentences if not own.startswith(s[0].split("{n}")[0])])
    m = rng.randint(12, 9800)
    earlier = [
        {"role": "user", "content": f"{fact.format(n=m)} {question} {ASK}"},
        {"role": "assistant", "content": f"Answer: {m}"},
    ]
    return {**row, "messages": earlier + row["messages"]}


def main() -> None:
    rng = random.Random(7)
    here = Path(__file__).parent / "rft"
    train_sentences, held_out = SENTENCES[:-HELD_OUT], SENTENCES[-HELD_OUT:]
    train = [line(rng, s) for _ in range(8) for s in train_sentences]
    validation = [line(rng, s) for _ in range(10) for s in held_out]
    rng.shuffle(train)
    earlier = random.Random(11)  # its own stream: the lines themselves stay as they were
    train = [
        with_earlier_exchange(earlier, row, train_sentences) if i % EARLIER_EVERY == 0 else row
        for i, row in enumerate(train)
    ]
    for name, rows in (("train.jsonl", train), ("validation.jsonl", validation)):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
