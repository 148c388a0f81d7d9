"""python examples/make_examples.py

Writes the example datasets under ``examples/``: a support-ticket routing task on which tuning
visibly helps the small default base model (SmolLM2-135M-Instruct answers with chatty prose;
after tuning it answers with exactly one of four label words).

    examples/ticket-routing/{train,validation,test}.jsonl        Vertex text format
        {"input_text": "<instruction>\\nTicket: <ticket>", "output_text": "<label>"}
    examples/ticket-routing-chat/{train,validation,test}.jsonl   Gemini chat format
        {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "model", ...}]}

Every ticket is composed from a template (about 30 per label) and slot fillers (names, order
numbers, amounts, products, devices, carriers, error codes...), wrapped in an optional greeting
and sign-off, with an occasional typo or casual lower-case style. The label word itself is
avoided in ticket text. Pure standard library, a fixed seed, so rerunning rewrites the same bytes.
Each split is label-balanced, and no ticket text appears twice anywhere (not across splits, not
across the two datasets). The script checks all of that after writing and fails loudly if not.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

SEED = 20240611
LABELS = ("billing", "technical", "account", "shipping")
INSTRUCTION = (
    "Route this support ticket to one of: billing, technical, account, shipping. "
    "Answer with the label only."
)
SPLITS = {"train": 80, "validation": 10, "test": 20}  # tickets per label per split
MULTI_TURN_PER_LABEL = 4  # chat train lines per label with two user/model exchanges

HERE = Path(__file__).resolve().parent
TEXT_DIR = HERE / "ticket-routing"
CHAT_DIR = HERE / "ticket-routing-chat"

# ---------------------------------------------------------------------------------------------
# Templates. Each is one or two sentences; {slots} are filled from FILLERS below. Wording avoids
# the label words, so the model has to learn the routing rather than copy a keyword.
# ---------------------------------------------------------------------------------------------
TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for order {order}. Please refund the duplicate {amount}.",
        "My {card} shows a charge of {amount} from you that I don't recognise.",
        "I cancelled my {plan} last month but you still took {amount} this month.",
        "The promo code {promo} didn't apply at checkout and I paid full price. Can you credit the difference?",
        "Can I get a VAT invoice for order {order}? I need it for my company expenses.",
        "Why did the price of my {plan} go up from {amount} to {amount2} without any notice?",
        "I sent the {product} back {days} ago and still haven't received my refund of {amount}.",
        "My payment keeps getting declined even though my {card} works everywhere else.",
        "I'd like to switch the {plan} from monthly to yearly payments. Will this month be credited?",
        "You charged me {amount} during a free trial that was supposed to be free until {weekday}.",
        "The receipt for order {order} shows the wrong company name, please reissue it.",
        "I was overcharged: the {product} was listed at {amount} but I paid {amount2}.",
        "My {card} expired. How do I change the card you take the monthly payment from?",
        "There's a pending authorisation of {amount} from three days ago that never dropped off my statement.",
        "Can I pay for order {order} in instalments instead of all at once?",
        "I got an email saying my payment failed, but the {amount} was taken from my bank anyway.",
        "Please turn off auto-renewal on my {plan}, I don't want to be charged again.",
        "Do you offer a student discount on the {plan}? I'd like it applied from my next invoice.",
        "The sales tax on order {order} seems far too high for {city}.",
        "I was charged in euros instead of dollars and my bank added a conversion fee on top.",
        "My refund went to an old card I no longer have. How do I get that {amount} back?",
        "My gift card only covered part of order {order} and the rest was taken from my {card} twice.",
        "I need copies of all my invoices from last year for my bookkeeper.",
        "There is a {amount} late fee on my statement but I paid on time.",
        "I was promised a price match on the {product} but nobody has refunded the {amount} difference.",
        "How much will the {plan} cost once the introductory discount ends?",
        "My bank flagged a payment of {amount} to you as suspicious. Was that really for order {order}?",
        "Please move me from the {plan} to the {plan2} from the next cycle and prorate the fee.",
        "Can you split the payment for order {order} across two cards?",
        "The coupon said 20% off but the discount at checkout was only {amount}.",
        "I was billed {amount} for the {plan} even though I downgraded before the renewal date.",
    ],
    "technical": [
        "The app crashes as soon as I open it on my {device}.",
        "My {bluetooth} won't pair over Bluetooth with my {device} anymore.",
        "I keep getting {error} when I try to sync my data.",
        "After updating to version {version}, the app only shows a blank white screen.",
        "The {connected} drops off the wifi every few hours and I have to restart it.",
        "The firmware update for my {connected} has been stuck at {pct}% for over an hour.",
        "Notifications stopped working on my {device} since the last update.",
        "The website won't load the product pages in Firefox, it just spins forever.",
        "My {battery} battery goes from full to empty in about {hours} hours even when it's idle.",
        "Exporting a report to PDF fails with {error} every single time.",
        "The {connected} keeps rebooting by itself every night around {time}.",
        "Voice commands aren't recognised by the {voice} anymore, it just beeps at me.",
        "The desktop app uses 100% CPU on my {device} and the fan never stops.",
        "Video from the {camera} is choppy and freezes every few seconds.",
        "The app says 'no internet connection' on my {device} but every other app works fine.",
        "In dark mode some of the buttons are invisible on my {device}.",
        "The {connected} never shows up in the setup wizard, it stays on 'searching for devices'.",
        "Uploading photos fails right at the end with {error}.",
        "Your API has been returning {code} errors for about half of our requests since {weekday}.",
        "The {connected} app on my {device} freezes whenever I open the settings screen.",
        "The companion app for the {bluetooth} won't install from the store on my {device}.",
        "My {connected} has a red blinking light and doesn't respond to any of the buttons.",
        "The screen on the {screen} started flickering after the latest firmware.",
        "Sound cuts out on the {audio} whenever my {device} locks its screen.",
        "Calendar events I add on my {device} don't show up in the web version.",
        "The Slack integration stopped posting messages and the logs show {error}.",
        "I can't scroll past the first page of results in the app on my {device}.",
        "I factory reset my {connected} and now it won't connect to the app at all.",
        "Search returns nothing, even for items I know are there.",
        "The touch controls on the {wearable} register two taps for every one.",
        "Since version {version} the {bluetooth} loses its settings every time it powers off.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives at {email}.",
        "I'd like to change the email address on my profile from {email} to a new one.",
        "My login was locked after too many attempts. How do I get back in?",
        "I lost my phone and can't get the two-factor code anymore. Please help me sign in.",
        "Please delete my profile and all the personal data you hold on me.",
        "Someone changed my password without me, I got a sign-in alert from {city}.",
        "How do I change my username? I made a typo in it when I signed up.",
        "I accidentally created two logins, one with {email} and one with my work address. Can you merge them?",
        "I'm not receiving the verification email to confirm my sign-up.",
        "The magic sign-in link says it has expired every time I click it.",
        "I want to turn on two-factor authentication but I can't find the setting anywhere.",
        "My display name shows as {name2} but it should be {name}, and the field is greyed out.",
        "I no longer have access to {email}. How can I update my recovery email so I can still sign in?",
        "I signed up with Google and now want to set a normal password instead.",
        "I got a message saying my profile was suspended for unusual activity. What did I do?",
        "How do I download a copy of all the personal data you have about me?",
        "Please close my account, I won't be using the service anymore.",
        "I changed my phone number and the SMS security codes still go to the old one.",
        "The security questions I set up years ago don't work anymore and I'm locked out.",
        "I'd like to transfer ownership of our team workspace to my colleague {name2}.",
        "Every time I sign in I'm asked to verify my identity again, even on the same {device}.",
        "How do I remove an old {device} from my list of trusted devices?",
        "My employee {name2} left the company. How do I revoke their access?",
        "I'd like to reactivate the profile I deactivated {days} ago.",
        "The email I sign in with has a typo in it and I can't fix it myself.",
        "I received a password reset email I didn't ask for. Is my login safe?",
        "I moved to {city}, how do I change the country and region on my profile?",
        "I'm trying to sign up with {email} but it says that address is already in use.",
        "Please unlink my Facebook login from my profile.",
        "My username was taken over by someone else and I can't get into my profile.",
        "Can I change the primary login email to {email} without losing my order history?",
    ],
    "shipping": [
        "My order {order} was supposed to arrive on {weekday} and it still hasn't shown up.",
        "The tracking for order {order} hasn't updated in {days}.",
        "{carrier} says the package was delivered but there's nothing at my door.",
        "I need to change the delivery address for order {order}, I just moved to {city}.",
        "The box was crushed in transit and the {product} inside is cracked.",
        "Do you deliver to {country}? I can't select it as a destination.",
        "How long does express delivery take to {city}?",
        "My parcel has been stuck in customs in {city} for {days}. What paperwork do they need?",
        "I only received the {product}; the rest of order {order} is missing from the box.",
        "Can {carrier} hold my package at the depot? I'm away until {weekday}.",
        "The courier left my parcel with a neighbour but I don't know which one.",
        "I ordered the {product} {days} ago and it still says 'preparing for dispatch'.",
        "Can I pick up order {order} at your store in {city} instead of having it delivered?",
        "The {carrier} driver says they tried to deliver while I was home all day.",
        "I received someone else's parcel, addressed to a completely different street.",
        "Tracking shows my package went to {city} instead of my town.",
        "Is it possible to schedule the delivery of order {order} for a weekend?",
        "Order {order} was sent back to you because of an incomplete address. Can you send it out again?",
        "The estimated arrival date for my {product} keeps moving back every day.",
        "I need order {order} before {weekday} for a birthday. Can it go out next-day instead?",
        "The delivery driver left my {product} outside in the rain by the gate.",
        "Which courier will bring order {order}? I need to let the building concierge know.",
        "I got two tracking numbers for one order and one of them doesn't work.",
        "The parcel locker code for order {order} isn't working.",
        "Half of my order arrived on {weekday} but the {product} is still in transit. Is it coming separately?",
        "Can you ask the driver to leave the package at the back door? The front porch isn't safe.",
        "Order {order} was marked as dispatched {days} ago but {carrier} says they never received it.",
        "The label on my parcel has my old flat number. Can you fix it before it arrives?",
        "The package needs a signature and I'm at work all day. Can it be left without one?",
        "My delivery of order {order} is {days} late and the {carrier} website shows no updates.",
        "The {product} I ordered was delivered to my old address in {city}.",
    ],
}

GREETINGS = [
    "Hi!",
    "Hello.",
    "Hi there!",
    "Good morning.",
    "Hey team!",
    "Dear support team,\n",
    "Hello, {name} here.",
    "Hi, this is {name}.",
]
CLOSERS = [
    "Thanks.",
    "Thanks in advance!",
    "Please help.",
    "This is really frustrating.",
    "Any update would be appreciated.",
    "Thank you, {name}",
    "Cheers, {name}",
    "Can someone get back to me today?",
    "I've been a customer for years.",
    "Please sort this out quickly.",
    "Regards, {name}",
    "Thanks for your help!",
]

FILLERS: dict[str, list[str]] = {
    "name": [
        "Maria",
        "James",
        "Priya",
        "Tom",
        "Aisha",
        "Lukas",
        "Chen",
        "Sofia",
        "Daniel",
        "Fatima",
        "Oliver",
        "Yuki",
        "Carlos",
        "Emma",
        "Kwame",
        "Ingrid",
        "Raj",
        "Hannah",
        "Mateo",
        "Zoe",
        "Ahmed",
        "Lena",
        "Noah",
        "Grace",
        "Tariq",
        "Olga",
    ],
    # Anything the shop sells (billing and shipping tickets), then narrower groups so that a
    # technical ticket never asks for video from a speaker or touch controls on a desk.
    "product": [
        "wireless headset",
        "smart thermostat",
        "4K webcam",
        "mechanical keyboard",
        "fitness tracker",
        "robot vacuum",
        "portable speaker",
        "e-reader",
        "smartwatch",
        "video doorbell",
        "standing desk",
        "coffee grinder",
        "gaming mouse",
        "noise-cancelling headset",
        "air purifier",
        "mesh wifi kit",
        "baby monitor",
        "smart plug",
        "office chair",
        "kettle",
    ],
    "connected": [
        "smart thermostat",
        "robot vacuum",
        "video doorbell",
        "mesh wifi kit",
        "smart plug",
        "air purifier",
        "baby monitor",
        "smart speaker",
        "security camera",
        "smart display",
    ],
    "bluetooth": [
        "wireless headset",
        "fitness tracker",
        "smartwatch",
        "portable speaker",
        "gaming mouse",
        "mechanical keyboard",
        "noise-cancelling headset",
    ],
    "battery": [
        "wireless headset",
        "fitness tracker",
        "smartwatch",
        "portable speaker",
        "e-reader",
        "robot vacuum",
        "gaming mouse",
    ],
    "voice": ["smart speaker", "smart display", "robot vacuum", "smart thermostat"],
    "camera": ["video doorbell", "4K webcam", "baby monitor", "security camera"],
    "screen": ["e-reader", "smartwatch", "smart display", "fitness tracker"],
    "audio": ["wireless headset", "portable speaker", "noise-cancelling headset", "smart speaker"],
    "wearable": ["wireless headset", "smartwatch", "fitness tracker", "noise-cancelling headset"],
    "device": [
        "iPhone 13",
        "iPhone 15 Pro",
        "Pixel 7",
        "Galaxy S22",
        "Galaxy A54",
        "OnePlus 11",
        "iPad Air",
        "MacBook Air",
        "Windows 11 laptop",
        "Chromebook",
        "Surface Pro",
        "Android tablet",
        "Moto G",
    ],
    "plan": [
        "Pro plan",
        "Family plan",
        "Premium subscription",
        "annual plan",
        "Basic plan",
        "Team plan",
        "Plus membership",
    ],
    "carrier": ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "DPD", "The courier", "Canada Post"],
    "city": [
        "Denver",
        "Leeds",
        "Toronto",
        "Austin",
        "Lyon",
        "Melbourne",
        "Dublin",
        "Portland",
        "Munich",
        "Cape Town",
        "Osaka",
        "Rotterdam",
        "Glasgow",
        "Phoenix",
        "Valencia",
    ],
    "country": [
        "Norway",
        "Iceland",
        "Mexico",
        "New Zealand",
        "Portugal",
        "Singapore",
        "Chile",
        "Greece",
        "South Korea",
    ],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
    "days": [
        "two weeks",
        "10 days",
        "over a week",
        "five days",
        "three days",
        "a month",
        "12 days",
        "nine days",
    ],
    "error": [
        "error E-102",
        "error 0x80070005",
        "ERR_SYNC_TIMEOUT",
        "error code 42",
        "'unexpected error (-1009)'",
        "error 5003",
        "NETWORK_FAILURE",
        "error E17",
    ],
    "code": ["503", "500", "429", "502", "504"],
    "version": ["3.2.1", "4.0", "4.1.3", "2.9", "5.0.2", "6.1"],
    "time": ["2am", "3 in the morning", "midnight", "11pm", "4:30am"],
    "card": [
        "Visa ending in 4821",
        "Mastercard ending 0937",
        "Amex",
        "debit card",
        "credit card",
        "PayPal",
        "Visa ending 1170",
        "Mastercard ending in 5562",
    ],
    "promo": ["SPRING20", "WELCOME10", "SAVE15", "FREESHIP", "VIP25", "BF2023"],
}

CURRENCIES = ["$", "€", "£"]
EMAIL_DOMAINS = [
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "proton.me",
    "hotmail.co.uk",
]


def fill(rng: random.Random, template: str, name: str) -> str:
    """Fill every {slot} in a template; ``name`` is the writer, computed slots (order, amount,
    email...) are made here."""
    name2 = rng.choice([n for n in FILLERS["name"] if n != name])
    low = rng.choice(
        [
            4.99,
            9.99,
            12.5,
            19.99,
            24.0,
            29.99,
            39.0,
            49.99,
            59.95,
            79.0,
            89.99,
            119.0,
            149.99,
            199.0,
            249.5,
        ]
    )
    cur = rng.choice(CURRENCIES)
    values = {key: rng.choice(options) for key, options in FILLERS.items()}
    values.update(
        name=name,
        name2=name2,
        plan2=rng.choice([p for p in FILLERS["plan"] if p != values["plan"]]),
        order=rng.choice(["#{}", "#{}", "TL-{}", "{}"]).format(rng.randint(10000, 999999)),
        amount=f"{cur}{low:.2f}",
        amount2=f"{cur}{low * rng.choice([1.2, 1.25, 1.5, 2.0]):.2f}",
        pct=str(rng.choice([12, 37, 45, 63, 80, 99])),
        hours=str(rng.choice([3, 4, 5, 6, 8])),
        email=f"{name.lower()}{rng.choice(['', '.', '_'])}{rng.randint(1, 99)}@{rng.choice(EMAIL_DOMAINS)}",
    )
    return template.format(**values)


def add_typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent inner letters of one longer plain word, as a hurried typist would."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 5]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def make_ticket(rng: random.Random, label: str) -> tuple[str, str]:
    """One customer message (optional greeting, the templated body, optional sign-off), and its
    filled body alone, which is what must not repeat."""
    writer = rng.choice(FILLERS["name"])
    parts = []
    if rng.random() < 0.35:
        parts.append(fill(rng, rng.choice(GREETINGS), writer))
    body = fill(rng, rng.choice(TEMPLATES[label]), writer)
    parts.append(body)
    if rng.random() < 0.35:
        parts.append(fill(rng, rng.choice(CLOSERS), writer))
    text = " ".join(parts).replace("\n ", "\n")
    if rng.random() < 0.12:
        text = add_typo(rng, text)
    if rng.random() < 0.08:  # casual style: all lower case, no final full stop
        text = text.lower().rstrip(".")
    return text, body


def draw_tickets(rng: random.Random, label: str, n: int, seen: set[str]) -> list[str]:
    """n tickets for one label whose filled body appears nowhere else (``seen`` is shared by both
    datasets), so a held-out ticket never differs from a training one by a greeting alone."""
    out: list[str] = []
    while len(out) < n:
        ticket, body = make_ticket(rng, label)
        if body.lower() not in seen:
            seen.add(body.lower())
            out.append(ticket)
    return out


def split_balanced(rng: random.Random, seen: set[str], extra: int = 0):
    """{split: [(ticket, label), ...]} with SPLITS[split] tickets per label, shuffled; plus
    ``extra`` further tickets per label (used as first turns of multi-turn chats)."""
    per_label = sum(SPLITS.values())
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    extras: dict[str, list[str]] = {}
    for label in LABELS:
        tickets = draw_tickets(rng, label, per_label + extra, seen)
        start = 0
        for name, count in SPLITS.items():
            splits[name] += [(t, label) for t in tickets[start : start + count]]
            start += count
        extras[label] = tickets[start:]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits, extras


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def text_row(ticket: str, label: str) -> dict:
    return {"input_text": f"{INSTRUCTION}\nTicket: {ticket}", "output_text": label}


def chat_row(exchanges: list[tuple[str, str]]) -> dict:
    messages = [{"role": "system", "content": INSTRUCTION}]
    for ticket, label in exchanges:
        messages += [{"role": "user", "content": ticket}, {"role": "model", "content": label}]
    return {"messages": messages}


def check(directory: Path, kind: str) -> None:
    """Re-read what was written: valid JSON, counts, balance, labels, no ticket in two places."""
    seen: dict[str, str] = {}
    for name, per_label in SPLITS.items():
        lines = (directory / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == per_label * len(LABELS), (directory, name, len(lines))
        final_labels: Counter[str] = Counter()
        for line in lines:
            row = json.loads(line)
            if kind == "text":
                pairs = [(row["input_text"].split("\nTicket: ", 1)[1], row["output_text"])]
            else:
                turns = row["messages"]
                assert turns[0] == {"role": "system", "content": INSTRUCTION}
                pairs = [
                    (u["content"], m["content"])
                    for u, m in zip(turns[1::2], turns[2::2], strict=True)
                ]
                assert all(
                    u["role"] == "user" and m["role"] == "model"
                    for u, m in zip(turns[1::2], turns[2::2], strict=True)
                )
            for ticket, label in pairs:
                assert label in LABELS, label
                assert ticket.lower() not in seen, (ticket, seen.get(ticket.lower()), name)
                seen[ticket.lower()] = name
            final_labels[pairs[-1][1]] += 1
        assert set(final_labels.values()) == {per_label}, (directory, name, final_labels)
        print(
            f"  {directory.relative_to(HERE.parent)}/{name}.jsonl: {len(lines)} lines, "
            f"{dict(sorted(final_labels.items()))}"
        )


def main() -> None:
    seen: set[str] = set()  # lower-cased ticket bodies already used, across both datasets

    # Vertex text format.
    rng = random.Random(SEED)
    splits, _ = split_balanced(rng, seen)
    for name, rows in splits.items():
        write_jsonl(TEXT_DIR / f"{name}.jsonl", [text_row(t, lab) for t, lab in rows])

    # Gemini chat format: a different draw, and a few two-exchange conversations in train.
    rng = random.Random(SEED + 1)
    splits, first_turns = split_balanced(rng, seen, extra=MULTI_TURN_PER_LABEL)
    chats = {name: [[pair] for pair in rows] for name, rows in splits.items()}
    multi = Counter()  # final label -> conversations given a first exchange
    pending = [(t, lab) for lab in LABELS for t in first_turns[lab]]
    rng.shuffle(pending)
    for chat in chats["train"]:  # the first few conversations of each final label get two turns
        if pending and multi[chat[-1][1]] < MULTI_TURN_PER_LABEL:
            multi[chat[-1][1]] += 1
            chat.insert(0, pending.pop())
    for name, rows in chats.items():
        write_jsonl(CHAT_DIR / f"{name}.jsonl", [chat_row(c) for c in rows])

    print("wrote and checked:")
    check(TEXT_DIR, "text")
    check(CHAT_DIR, "chat")
    label_word = re.compile(r"\b(" + "|".join(LABELS) + r")\b")
    print(
        f"  {len(seen)} distinct tickets, {sum(1 for t in seen if label_word.search(t))} "
        f"contain a label word; {sum(multi.values())} multi-turn chats in chat train"
    )


if __name__ == "__main__":
    main()
