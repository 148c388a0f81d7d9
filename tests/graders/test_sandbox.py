"""Python graders in their fenced process: scores come back; a timeout, a memory hog, an
exception, a crash, a bad return value and a network attempt each score 0, are counted, and
leave the other answers graded."""

import socket
import threading
import time

import pytest

from tunelab.graders.build import build_grader
from tunelab.graders.sandbox import GraderUnavailable


@pytest.fixture
def graders_dir(tmp_path, monkeypatch):
    folder = tmp_path / "graders"
    folder.mkdir()
    monkeypatch.setenv("TUNELAB_PYTHON_GRADERS", str(folder))
    return folder


def grader(folder, name, code, **limits):
    (folder / f"{name}.py").write_text(code)
    return build_grader({"type": "python", "source": name, **limits})


def test_scores_come_back_in_order(graders_dir):
    g = grader(
        graders_dir,
        "exact",
        "def grade(sample, item):\n"
        "    return float(sample['output_text'].strip() == str(item['answer']))\n",
    )
    grades = g.grade(["3", "4", " 5 "], [{"answer": 3}, {"answer": 5}, {"answer": 5}])
    assert grades.scores.tolist() == [1, 0, 1]
    assert not grades.failures


def test_a_timeout_scores_zero_and_the_rest_are_graded(graders_dir):
    g = grader(
        graders_dir,
        "spin",
        "import time\n"
        "def grade(sample, item):\n"
        "    if sample['output_text'] == 'spin':\n"
        "        while True: pass\n"
        "    if sample['output_text'] == 'sleep':\n"
        "        try:\n"
        "            time.sleep(60)\n"
        "        except BaseException:\n"
        "            time.sleep(60)\n"
        "    return 0.5\n",
        timeout_seconds=0.5,
    )
    start = time.monotonic()
    grades = g.grade(["a", "spin", "b", "sleep", "c"], [{}] * 5)
    assert grades.scores.tolist() == [0.5, 0, 0.5, 0, 0.5]
    assert grades.failures == {"timeout": 2}
    assert time.monotonic() - start < 10


def test_memory_limit(graders_dir):
    g = grader(
        graders_dir,
        "hog",
        "def grade(sample, item):\n"
        "    if sample['output_text'] == 'hog':\n"
        "        block = bytearray(1 << 30)  # 1 GiB against a 128 MB limit\n"
        "        return len(block)\n"
        "    return 1\n",
        memory_mb=128,
    )
    grades = g.grade(["a", "hog", "b"], [{}] * 3)
    assert grades.scores.tolist() == [1, 0, 1]
    assert grades.failures == {"exception": 1}  # MemoryError inside the child


def test_exceptions_crashes_and_bad_values(graders_dir):
    g = grader(
        graders_dir,
        "bad",
        "import os\n"
        "def grade(sample, item):\n"
        "    kind = sample['output_text']\n"
        "    if kind == 'raise': raise RuntimeError('no')\n"
        "    if kind == 'exit': os._exit(3)\n"
        "    if kind == 'nan': return float('nan')\n"
        "    if kind == 'text': return 'high'\n"
        "    return 1\n",
    )
    grades = g.grade(["raise", "ok", "exit", "ok", "nan", "text", "ok"], [{}] * 7)
    assert grades.scores.tolist() == [0, 1, 0, 1, 0, 0, 1]
    assert grades.failures == {"exception": 1, "crash": 1, "invalid_score": 2}


def test_network_and_subprocesses_are_refused(graders_dir):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(3)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    g = grader(
        graders_dir,
        "leak",
        "def grade(sample, item):\n"
        "    kind = sample['output_text']\n"
        "    if kind == 'socket':\n"
        "        import socket\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    if kind == 'raw':\n"
        "        import _socket\n"
        "        _socket.socket()\n"
        "    if kind == 'shell':\n"
        "        import subprocess\n"
        "        subprocess.run(['true'])\n"
        "    if kind == 'system':\n"
        "        import os\n"
        "        os.system('true')\n"
        "    return 1\n",
    )
    grades = g.grade(["socket", "raw", "shell", "system", "fine"], [{}] * 5)
    listener.join()
    server.close()
    assert grades.scores.tolist() == [0, 0, 0, 0, 1]
    assert grades.failures == {"exception": 4}
    assert not accepted  # nothing ever connected


def test_a_file_that_does_not_load_is_a_clear_error(graders_dir):
    with pytest.raises(GraderUnavailable, match="cannot load: SyntaxError"):
        grader(graders_dir, "broken", "def grade(sample, item)\n")
    with pytest.raises(GraderUnavailable, match="cannot load: AttributeError"):
        grader(graders_dir, "nograde", "x = 1\n")
    with pytest.raises(GraderUnavailable, match=r"no python grader 'missing'.*available: "):
        build_grader({"type": "python", "source": "missing"})
