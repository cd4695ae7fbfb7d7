"""The built-in runner reads a model's stream of server-sent events in chunks cut anywhere (a fast stream is
read at most every READ_PACE, many events a read): every line comes out whole, whatever the cuts."""

from __future__ import annotations

from mc.agents.builtin import SseLines

STREAM = 'data: {"delta":"héllo wörld ✓"}\r\n\r\ndata: {"d":"a\u2028b"}\n\n: keep-alive\rdata: [DONE]\n\nlast'.encode()
LINES = [
    'data: {"delta":"héllo wörld ✓"}',
    "",
    'data: {"d":"a\u2028b"}',
    "",
    ": keep-alive",
    "data: [DONE]",
    "",
    "last",
]


def read(chunks: list[bytes]) -> list[str]:
    lines = SseLines()
    out: list[str] = []
    for chunk in chunks:
        out.extend(lines.feed(chunk))
    out.extend(lines.feed(b"", final=True))
    return out


def test_one_chunk_gives_every_line() -> None:
    assert read([STREAM]) == LINES


def test_a_cut_anywhere_gives_the_same_lines() -> None:
    for cut in range(len(STREAM) + 1):  # inside a UTF-8 character, between CR and LF, inside a line
        assert read([STREAM[:cut], STREAM[cut:]]) == LINES, cut


def test_a_byte_at_a_time_gives_the_same_lines() -> None:
    assert read([STREAM[i : i + 1] for i in range(len(STREAM))]) == LINES


def test_a_stream_that_ends_with_its_line_end_has_no_empty_last_line() -> None:
    assert read([b"data: 1\n", b"\n"]) == ["data: 1", ""]
