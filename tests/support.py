"""Helpers shared by tests (not fixtures): dataset writing, a live server, stand-ins."""

import json
import socket
import threading
import time

import uvicorn


def write_jsonl(path, rows):
    """Write dicts as JSON lines (used by tests that build small datasets)."""

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COLOR_LABELS = ["red", "green", "blue", "yellow"]


def color_rows(n, offset=0):
    """A task a tiny model can learn in a few dozen steps: name the colour word in the text."""
    return [
        {
            "input_text": f"item {i + offset}: the {COLOR_LABELS[i % 4]} one",
            "output_text": COLOR_LABELS[i % 4],
        }
        for i in range(n)
    ]


def write_lines(path, lines):
    """Write text lines (for TSV and deliberately malformed files)."""
    path.write_text("".join(line + "\n" for line in lines))
    return path


def preference_rows(n: int, offset: int = 0) -> list[dict]:
    """Preference pairs with a checkable preference. Preferred: the bare answer; rejected: the
    answer padded with filler; the preferred one alternates between the candidates."""
    rows = []
    for i in range(offset, offset + n):
        short, long = f"It is {i}.", f"It is {i}. Well, that is a long story, as you know."
        rows.append(
            {
                "input_text": f"Question {i}?",
                "candidate_0": short if i % 2 else long,
                "candidate_1": long if i % 2 else short,
                "choice": 0 if i % 2 else 1,
            }
        )
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


class StubPool:
    def target(self, name):
        raise AssertionError("auth must refuse before any model is resolved")

    endpoint_target = target

    def model_names(self):
        raise AssertionError("auth must refuse before listing models")

    def close(self):
        pass
