"""aipower/sse.py: the WHATWG event-stream decoding rules and the frame encoder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aipower.sse import DONE_FRAME, SseDecoder, SseEvent, decode, encode


def feed_all(*chunks: bytes) -> list[SseEvent]:
    """Every event a fresh decoder dispatches for these chunks (no end-of-stream flush)."""
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def decode_all(*parts: bytes) -> list[SseEvent]:
    return [event async for event in decode(chunks_of(*parts))]


STREAM = 'data: {"a":1}\n\nevent: ping\ndata: two\ndata: lines\n\n: comment\nid: 7\ndata: 你好\n\n'
EXPECTED = [
    SseEvent(data='{"a":1}'),
    SseEvent(data="two\nlines", event="ping"),
    SseEvent(data="你好", id="7"),
]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings_are_equivalent(newline: str) -> None:
    raw = STREAM.replace("\n", newline).encode()
    # A lone CR at the end may be half of a CRLF, so the decoder waits for one more byte before using it.
    assert feed_all(raw, b"\n") == EXPECTED


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_a_stream_split_at_every_byte_position_decodes_the_same(newline: str) -> None:
    raw = STREAM.replace("\n", newline).encode()
    for cut in range(1, len(raw)):
        assert feed_all(raw[:cut], raw[cut:], b"\n") == EXPECTED, f"split at byte {cut}"


def test_a_stream_fed_one_byte_at_a_time_decodes_the_same() -> None:
    raw = STREAM.replace("\n", "\r\n").encode()
    assert feed_all(*(raw[i : i + 1] for i in range(len(raw)))) == EXPECTED


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SseEvent("a"), SseEvent("b")]


def test_an_event_is_dispatched_only_at_the_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [SseEvent("x")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data:x\n\n", [SseEvent("x")]),  # the space after the colon is optional
        (b"data:  x\n\n", [SseEvent(" x")]),  # only one leading space is removed
        (b"data\n\n", [SseEvent("")]),  # a field name without colon has an empty value
        (b"data:\ndata:\n\n", [SseEvent("\n")]),
        (b"data: a:b: c\n\n", [SseEvent("a:b: c")]),  # only the first colon separates
        (b": keep-alive\n\n", []),  # a comment alone dispatches nothing
        (b":\n\n", []),
        (b"retry: 10\nfoo: bar\ndata: x\n\n", [SseEvent("x")]),  # unknown fields are ignored
        (b"event: only\n\ndata: x\n\n", [SseEvent("x")]),  # an event without data is dropped with its type
        (b"\n\n\n", []),  # blank lines with nothing buffered dispatch nothing
        (b"id: 1\ndata: a\n\ndata: b\n\n", [SseEvent("a", id="1"), SseEvent("b", id="1")]),  # last id persists
        (b"event: e\ndata: a\n\ndata: b\n\n", [SseEvent("a", event="e"), SseEvent("b")]),  # event type resets
        (b"data: \xff\n\n", [SseEvent("\ufffd")]),  # invalid UTF-8 is replaced, never raised
    ],
)
def test_field_rules(raw: bytes, expected: list[SseEvent]) -> None:
    assert feed_all(raw) == expected


async def test_decode_yields_events_across_chunks() -> None:
    raw = STREAM.encode()
    assert await decode_all(raw[:5], raw[5:40], raw[40:]) == EXPECTED


@pytest.mark.parametrize(
    "tail",
    [b"data: [DONE]", b"data: [DONE]\n", b"data: [DONE]\r", b"data: [DONE]\r\n"],
    ids=["no-newline", "LF", "CR", "CRLF"],
)
async def test_decode_dispatches_data_left_without_a_blank_line_at_eof(tail: bytes) -> None:
    assert await decode_all(b"data: first\n\n", tail) == [SseEvent("first"), SseEvent("[DONE]")]


async def test_decode_of_an_empty_stream_yields_nothing() -> None:
    assert await decode_all() == []
    assert await decode_all(b"", b": only a comment\n") == []


def test_encode_is_one_data_frame() -> None:
    assert encode(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE_FRAME == b"data: [DONE]\n\n"


@pytest.mark.parametrize("payload", [b'{"x":"y"}', b"[DONE]", '{"t":"é—你"}'.encode(), b""])
def test_encode_round_trips_through_the_decoder(payload: bytes) -> None:
    assert feed_all(encode(payload)) == [SseEvent(payload.decode())]
