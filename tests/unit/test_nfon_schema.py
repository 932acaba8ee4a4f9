"""The NFON wire format mapped into the domain model: the spec's examples,
values we do not know, broken frames and the spec's broken timestamps."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from presence_sync.model import CallState, Direction, Line, Presence
from presence_sync.nfon.auth import jwt_claims, jwt_lifetime
from presence_sync.nfon.schema import (
    FrameError,
    extension_from_wire,
    parse_call,
    parse_state,
    parse_time,
    tokens_from_wire,
)

CEST = timezone(timedelta(hours=2))
SPEC_TIME = datetime(2025, 9, 23, 16, 51, 22, 954969, tzinfo=CEST)
SPEC_EXAMPLE_TIME = datetime(2013, 10, 27, 13, 1, 10, 69620, tzinfo=CEST)


def test_the_specs_state_example() -> None:
    event = parse_state(
        '{"extension":"2001","customer":"K9999","presence":"available","line":"in-use"}'
    )
    assert event.extension == "2001"
    assert event.customer == "K9999"
    assert event.line is Line.IN_USE
    assert event.presence is Presence.AVAILABLE
    assert event.updated is None


def test_the_specs_call_example() -> None:
    event = parse_call(
        json.dumps(
            {
                "uuid": "715a1333-0174-40ea-8b38-67e289069476",
                "state": "ring",
                "caller": "0891234567",
                "caller_context": "global",
                "callee": "089453000",
                "callee_context": "K9999",
                "direction": "inbound",
                "extension": "1000",
                "updated": "2025-09-23T16:51:22.954969226+02:00",
            }
        ).encode()
    )
    assert event.uuid == "715a1333-0174-40ea-8b38-67e289069476"
    assert event.state is CallState.RING
    assert event.direction is Direction.INBOUND
    assert event.extension == "1000"
    assert event.party == "0891234567"
    assert event.external is True
    assert event.updated == SPEC_TIME


def test_every_documented_enum_value_is_known() -> None:
    seen: list[tuple[str, object]] = []

    def unknown(field: str, value: object) -> None:
        seen.append((field, value))

    for line in ("unknown", "offline", "idle", "ringing", "in-use"):
        for presence in ("offline", "available", "away", "busy", "dnd", "null"):
            frame = json.dumps({"extension": "1", "line": line, "presence": presence})
            event = parse_state(frame, unknown)
            assert (event.line.value, event.presence.value) == (line, presence)
    for state in ("start", "caller-wait", "caller-dial", "caller-ring", "caller-answer",
                  "dial", "ring", "answer", "hangup", "end"):  # fmt: skip
        for direction in ("inbound", "outbound"):
            frame = json.dumps({"uuid": "u", "state": state, "direction": direction})
            call = parse_call(frame, unknown)
            assert (call.state.value, call.direction.value) == (state, direction)
    assert seen == []


def test_unknown_values_become_unknown_and_are_reported() -> None:
    seen: list[tuple[str, object]] = []

    def unknown(field: str, value: object) -> None:
        seen.append((field, value))

    state = parse_state('{"extension":"7","line":"on-hold","presence":"unknown"}', unknown)
    assert (state.line, state.presence) == (Line.UNKNOWN, Presence.UNKNOWN)
    call = parse_call('{"uuid":"u","state":"transfer","direction":["in"]}', unknown)
    assert (call.state, call.direction) == (CallState.UNKNOWN, Direction.UNKNOWN)
    assert seen == [
        ("line", "on-hold"),
        ("presence", "unknown"),
        ("state", "transfer"),
        ("direction", ["in"]),
    ]


def test_missing_line_and_presence_are_unknown_but_json_null_presence_is_nfons_null() -> None:
    seen: list[str] = []
    event = parse_state('{"extension":"7"}', lambda field, _: seen.append(field))
    assert (event.line, event.presence) == (Line.UNKNOWN, Presence.UNKNOWN)
    assert seen == ["line", "presence"]
    assert parse_state('{"extension":"7","line":"idle","presence":null}').presence is Presence.NONE


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "json"),
        ("", "json"),
        (b"\xff\xfe{}", "json"),
        ("[" * 100_000, "json"),
        ('["extension","100"]', "shape"),
        ('"text"', "shape"),
        ("null", "shape"),
        ('{"line":"idle","presence":"available"}', "field"),
        ('{"extension":"","line":"idle"}', "field"),
        ('{"extension":{"n":1},"line":"idle"}', "field"),
    ],
)
def test_broken_state_frames_raise_frame_error_with_a_reason(
    frame: str | bytes, reason: str
) -> None:
    with pytest.raises(FrameError) as caught:
        parse_state(frame)
    assert caught.value.reason == reason


def test_a_call_needs_a_uuid_but_not_an_extension() -> None:
    with pytest.raises(FrameError) as caught:
        parse_call('{"state":"ring","extension":"100"}')
    assert caught.value.reason == "field"
    event = parse_call('{"uuid":"u","state":"hangup"}')
    assert event.extension is None
    assert event.external is None


def test_numeric_extension_is_tolerated() -> None:
    assert parse_state('{"extension":100,"line":"idle","presence":"away"}').extension == "100"


def test_frame_error_detail_never_echoes_the_frame() -> None:
    with pytest.raises(FrameError) as caught:
        parse_call('{"caller":"0891234567","state":"ring"}')
    assert "0891234567" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-09-23T16:51:22.954969226+02:00", SPEC_TIME),
        ("2025-09-23T14:51:22Z", datetime(2025, 9, 23, 14, 51, 22, tzinfo=UTC)),
        ("2025-09-23T14:51:22", datetime(2025, 9, 23, 14, 51, 22, tzinfo=UTC)),
        ("2025-09-23t14:51:22.5z", datetime(2025, 9, 23, 14, 51, 22, 500000, tzinfo=UTC)),
        # The spec's own examples carry an extra ":00"; read best effort.
        ("2013-10-27T13:01:10:00.069620809+02:00", SPEC_EXAMPLE_TIME),
        ("2013-10-27T13:01:10:00.069620809+0200", SPEC_EXAMPLE_TIME),
        ("2013-10-27 13:01", datetime(2013, 10, 27, 13, 1, tzinfo=UTC)),
        ("yesterday", None),
        ("2013-13-45T13:01:10Z", None),
        ("2013-10-27T13:01:10+25:00", None),
        ("", None),
        (1700000000, None),
        (None, None),
    ],
)
def test_updated_is_read_leniently(raw: object, expected: datetime | None) -> None:
    assert parse_time(raw) == expected


def test_a_broken_updated_never_rejects_the_frame() -> None:
    event = parse_state('{"extension":"1","line":"idle","presence":"dnd","updated":"13:01:10:00"}')
    assert event.updated is None
    assert event.presence is Presence.DND


def test_directory_entries() -> None:
    info = extension_from_wire({"uuid": "100@KLMN0", "extension_number": "100", "name": "office"})
    assert (info.extension, info.name, info.uuid) == ("100", "office", "100@KLMN0")
    assert extension_from_wire({"extension_number": "101"}).name is None
    for broken in ({"name": "no number"}, ["100"], None):
        with pytest.raises(FrameError):
            extension_from_wire(broken)


def test_tokens_reply() -> None:
    assert tokens_from_wire({"access-token": "a", "refresh-token": "r"}) == ("a", "r")
    assert tokens_from_wire({"access-token": "a"}) == ("a", None)
    for broken in ({"access_token": "a"}, {"access-token": ""}, "a"):
        with pytest.raises(FrameError):
            tokens_from_wire(broken)


def _jwt(claims: object) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS512', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_jwt_claims_are_read_without_verification() -> None:
    # A made-up signature, and an exp long past: neither is checked.
    assert jwt_claims(_jwt({"sub": "api-user", "exp": 1700000300})) == {
        "sub": "api-user",
        "exp": 1700000300,
    }
    for broken in (
        "",
        "a.b",
        "a.b.c.d",
        "x.!!!.y",
        f"x.{base64.urlsafe_b64encode(b'[1]').decode()}.y",
        _jwt([1]),  # a readable token whose payload is not an object
        _jwt("exp"),
        _jwt({"exp": 1})[:-1] + "!",  # a signature that is not base64url
    ):
        assert jwt_claims(broken) is None


@pytest.mark.parametrize(
    ("claims", "now", "lifetime"),
    [
        ({"iat": 1700000000, "exp": 1700000300}, 0.0, 300.0),  # exp - iat: clock-skew free
        ({"iat": 1700000000, "exp": 1700000001.5}, 0.0, 1.5),
        ({"exp": 1700000120}, 1700000000.0, 120.0),  # no iat: from our clock
        ({"exp": 1600000000}, 1700000000.0, None),  # already expired by our clock
        ({"iat": 5, "exp": 5}, 0.0, None),
        ({"exp": "soon"}, 0.0, None),
        ({"exp": True}, 0.0, None),
        ({"sub": "x"}, 0.0, None),
    ],
)
def test_jwt_lifetime(claims: dict[str, object], now: float, lifetime: float | None) -> None:
    assert jwt_lifetime(_jwt(claims), now) == lifetime
