"""The SSE decoder against the WHATWG event-stream parsing rules, fed in
every way a socket may cut the bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_sync.nfon.stream import ServerSentEvent, SSEDecoder

Triple = tuple[str, str, str]


def decode(*chunks: bytes, decoder: SSEDecoder | None = None) -> list[Triple]:
    decoder = decoder or SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return [(e.event, e.data, e.id) for e in events]


# A stream that exercises every rule at once.
MIXED = (
    b"\xef\xbb\xbf"
    b": hello, this is a comment\r\n"
    b"retry: 2500\r\n"
    b"id: 7\r\n"
    b'data: {"extension":"100",\r\n'
    b'data:  "line":"idle"}\r\n'
    b"\r\n"
    b"event: state\r"
    b"data: second\r"
    b"\r"
    b"data\n"
    b"id: bad\x00id\n"
    b"\n"
    b"data: \xc3\xa4 umlaut\n"
    b"id\n"
    b"\n"
    b"data: unfinished"
)
MIXED_EVENTS = [
    ("message", '{"extension":"100",\n "line":"idle"}', "7"),
    ("state", "second", "7"),
    ("message", "", "7"),
    ("message", "ä umlaut", ""),
]


def test_mixed_stream_in_one_chunk() -> None:
    decoder = SSEDecoder()
    assert decode(MIXED, decoder=decoder) == MIXED_EVENTS
    assert decoder.retry == 2500
    assert decoder.last_event_id == ""


@pytest.mark.parametrize("cut", range(1, len(MIXED)))
def test_split_at_every_byte_position(cut: int) -> None:
    assert decode(MIXED[:cut], MIXED[cut:]) == MIXED_EVENTS


def test_one_byte_at_a_time() -> None:
    assert decode(*(MIXED[i : i + 1] for i in range(len(MIXED)))) == MIXED_EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(MIXED)]
    chunks = [MIXED[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(*chunks) == MIXED_EVENTS


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_each_line_end(end: bytes) -> None:
    stream = b"event: x" + end + b"data: a" + end + b"data: b" + end + end
    assert decode(stream) == [("x", "a\nb", "")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # Were the LF read as a second line end, the blank line would dispatch
    # "a" alone and "b" would become a second event.
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r\n") == [("message", "a\nb", "")]
    assert decode(b"data: a\r", b"", b"\n", b"data: b\r\n\r\n") == [("message", "a\nb", "")]


def test_only_one_leading_bom_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [("message", "x", "")]
    # A second BOM makes the first field name "\ufeffdata", which is ignored.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []
    # Not at the start: it is data.
    assert decode(b"data: \xef\xbb\xbfx\n\n") == [("message", "\ufeffx", "")]


def test_a_stream_shorter_than_a_bom() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decode(b"\xbb", b"\xbfdata: y\n\n", decoder=decoder) == [("message", "y", "")]
    assert decode(b"\n", b"data: z\n\n") == [("message", "z", "")]


def test_comments_and_keepalives_dispatch_nothing() -> None:
    assert decode(b": keepalive\n\n:\n\n: x\n") == []
    assert decode(b"data: a\n: between\ndata: b\n\n") == [("message", "a\nb", "")]


def test_field_without_colon_and_unknown_fields() -> None:
    assert decode(b"data\ndata\n\n") == [("message", "\n", "")]
    assert decode(b"foo: bar\ndata: x\nbaz\n\n") == [("message", "x", "")]
    assert decode(b"event\ndata: x\n\n") == [("message", "x", "")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode(b"data:x\n\ndata:  y\n\n") == [("message", "x", ""), ("message", " y", "")]


def test_event_type_applies_to_one_event_only() -> None:
    assert decode(b"event: a\ndata: 1\n\ndata: 2\n\n") == [("a", "1", ""), ("message", "2", "")]


def test_event_without_data_is_not_dispatched_but_its_id_counts() -> None:
    decoder = SSEDecoder()
    assert decode(b"event: ping\nid: 42\n\n", decoder=decoder) == []
    assert decoder.last_event_id == "42"
    assert decode(b"data: x\n\n", decoder=decoder) == [("message", "x", "42")]


def test_ids_with_nul_are_ignored_and_empty_id_resets() -> None:
    decoder = SSEDecoder()
    assert decode(
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid:\ndata: c\n\n", decoder=decoder
    ) == [
        ("message", "a", "1"),
        ("message", "b", "1"),
        ("message", "c", ""),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [(b"retry: 3000", 3000), (b"retry: 3s", None), (b"retry:", None), (b"retry: -5", None)],
)
def test_retry_takes_only_ascii_digits(line: bytes, expected: int | None) -> None:
    decoder = SSEDecoder()
    decode(line + b"\n\n", decoder=decoder)
    assert decoder.retry == expected


def test_reset_drops_the_partial_event_but_keeps_id_and_retry() -> None:
    decoder = SSEDecoder()
    decode(b"retry: 100\nid: 9\n\ndata: half", decoder=decoder)
    decoder.reset()
    assert decode(b"\xef\xbb\xbfdata: new\n\n", decoder=decoder) == [("message", "new", "9")]
    assert decoder.retry == 100


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [("message", "\ufffd\ufffd", "")]


def test_a_one_mebibyte_event_in_many_chunks() -> None:
    payload = b"x" * (1024 * 1024)
    stream = b"data: " + payload + b"\n\ndata: after\n\n"
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    events = decode(*chunks)
    assert [len(data) for _, data, _ in events] == [len(payload), 5]


def test_an_over_limit_line_is_skipped_and_counted() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    stream = b"data: before\n\ndata: " + b"y" * 5000 + b"\n\ndata: after\n\n"
    chunks = [stream[i : i + 300] for i in range(0, len(stream), 300)]
    assert decode(*chunks, decoder=decoder) == [
        ("message", "before", ""),
        ("message", "after", ""),
    ]
    assert decoder.oversized == 1


def test_an_over_limit_event_of_many_lines_is_skipped_and_counted() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    many = b"data: " + b"z" * 90 + b"\n"
    stream = many * 20 + b"\n" + b"data: ok\n\n"
    assert decode(stream, decoder=decoder) == [("message", "ok", "")]
    assert decoder.oversized == 1


def test_an_over_limit_line_in_one_chunk_is_skipped() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decode(b"data: " + b"q" * 500 + b"\n\ndata: ok\n\n", decoder=decoder) == [
        ("message", "ok", "")
    ]
    assert decoder.oversized == 1


_PIECES = st.one_of(
    st.sampled_from(
        [
            b"data:",
            b"data: ",
            b"event: ",
            b"id: ",
            b"retry: ",
            b":",
            b" ",
            b"x",
            b"12",
            b"\r",
            b"\n",
            b"\r\n",
            b"\xef\xbb\xbf",
            b"\x00",
            b"\xc3\xa4",
            b"\xff",
            b"y" * 30,
        ]
    ),
    st.binary(max_size=6),
)


@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(min_value=0, max_value=200)))
def test_any_stream_decodes_the_same_however_it_is_cut(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    whole = SSEDecoder(max_event_bytes=64)
    expected = decode(stream, decoder=whole)
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    cut = SSEDecoder(max_event_bytes=64)
    assert decode(*(stream[a:b] for a, b in itertools.pairwise(bounds)), decoder=cut) == expected
    assert (cut.last_event_id, cut.retry, cut.oversized) == (
        whole.last_event_id,
        whole.retry,
        whole.oversized,
    )
