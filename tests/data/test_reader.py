"""Line reading: numbering, blank lines, BOM, bad UTF-8, and over-long lines in bounded memory."""

import hashlib
import io
import tracemalloc

from tunelab.data.reader import ReadError, iter_lines

MiB = 1024 * 1024


def read(data: bytes, **kwargs) -> list[tuple[int, str | ReadError]]:
    return list(iter_lines(io.BytesIO(data), **kwargs))


def test_lines_are_numbered_physically_and_blank_lines_skipped():
    assert read(b'{"a": 1}\n\n  \t\r\n{"b": 2}\n') == [(1, '{"a": 1}\n'), (4, '{"b": 2}\n')]


def test_final_line_without_newline_is_read():
    assert read(b"one\ntwo") == [(1, "one\n"), (2, "two")]


def test_bom_at_start_is_dropped():
    assert read(b'\xef\xbb\xbf{"a": 1}\nx\n') == [(1, '{"a": 1}\n'), (2, "x\n")]


def test_invalid_utf8_is_an_error_for_its_line_only():
    lines = read(b"ok\n\xffbad\nok again\n")
    assert lines[0] == (1, "ok\n")
    assert lines[1][0] == 2 and isinstance(lines[1][1], ReadError)
    assert lines[1][1].code == "invalid_utf8"
    assert lines[2] == (3, "ok again\n")


def test_limit_is_on_content_bytes_newline_excluded():
    ok, too_long = b"x" * 10, b"y" * 11
    for data in (ok + b"\n", ok):
        assert read(data, max_line_bytes=10) == [(1, data.decode())]
    for data in (too_long + b"\n", too_long):
        [(number, error)] = read(data, max_line_bytes=10)
        assert number == 1 and error.code == "line_too_long"


def test_every_byte_is_passed_to_on_bytes_even_of_skipped_lines():
    data = b"\xef\xbb\xbfa\n" + b"z" * 5000 + b"\n\nb"
    seen = hashlib.sha256()
    read(data, max_line_bytes=100, on_bytes=seen.update)
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()


class Spy:
    """A stream that records the largest piece a read returned."""

    def __init__(self, stream):
        self.stream, self.largest = stream, 0

    def readline(self, size=-1):
        piece = self.stream.readline(size)
        self.largest = max(self.largest, len(piece))
        return piece


def test_long_line_is_rejected_without_being_held_whole(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"input_text": "' + b"a" * (5 * MiB) + b'"}\n{"ok": 1}\n')
    tracemalloc.start()
    try:
        with open(path, "rb") as stream:
            spy = Spy(stream)
            lines = list(iter_lines(spy, max_line_bytes=MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [n for n, _ in lines] == [1, 2]
    assert lines[0][1].code == "line_too_long" and "5.0 MiB" in lines[0][1].message
    assert lines[1][1] == '{"ok": 1}\n'
    assert spy.largest <= MiB + 1
    assert peak < 3 * MiB
