"""Bounded, seeded fuzzing of what reads untrusted input: the configuration
loader (an admin's file, typos and all), the SSE decoder (bytes from the
network) and the NFON wire models (JSON from NFON).

Each input either works or fails in the documented way, and nothing else
ever escapes: the loader returns ``Settings`` or raises ``ConfigError``
whose every problem names the file (and a line, unless it is about the
whole file); the decoder never raises and counts what it drops; the wire
parsers return a model value or raise ``FrameError``. The mutations are
seeded, so a failure here fails the same way on every run and machine;
each test prints the seed and the mutant that broke it.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_sync.config import Settings, load
from presence_sync.errors import ConfigError
from presence_sync.nfon.schema import (
    FrameError,
    call_from_wire,
    extension_from_wire,
    parse_call,
    parse_state,
    state_from_wire,
    tokens_from_wire,
)
from presence_sync.nfon.stream import SSEDecoder

# A small but complete configuration: anchors and merge keys, quoted and
# plain scalars, flow and block collections, a ${VAR}, a secret file.
SEED_CONFIG = b"""\
nfon:
  customer: K1234
  username: api-user
  password_file: nfon-password
  request_timeout: 10s
people:
  - extension: "100"
    email: anna@example.com
    name: Anna Schmidt
    groups: &support [support]
  - {extension: "0101", email: ben@example.com, groups: [support, sales]}
  - extension: "102"
    groups: *support
    email: "carla@example.com"
    opt_out: [webhook]
lists:
  vip:
    - "+49 89 1234560"
    - {number: "+49 30 9876543", name: 'Big Customer Ltd'}
targets:
  log: {}
  webhook:
    url: ${WEBHOOK_URL:-https://hooks.example.com/presence}
    timeout: 10s
    headers: {X-Team: support}
rules:
  - name: on a call
    when: {line: in-use, groups: [support]}
    set:
      "*": &busy {availability: Busy, activity: InACall, text: "On a call \\u260e"}
  - name: evening
    when:
      time: {days: mon-fri, from: "18:00", to: "23:00"}
    set:
      "*": {<<: *busy, text: 'After hours'}
      webhook: null
timezone: Europe/Berlin
resync: {interval: 5m}
http:
  listen: 127.0.0.1:9477
logging:
  level: info
"""

# What the mutator inserts: YAML's own punctuation and the bytes that broke
# loaders before (control characters, a BOM in the middle, invalid UTF-8).
TOKENS = [
    b"\x00", b"\x08", b"\x7f", b"\x1b[31m", b"\t", b"\r", b"\n", b"\r\n", b" ", b"  ",
    b":", b": ", b"- ", b"-", b"? ", b",", b"{", b"}", b"[", b"]", b"'", b'"', b"#",
    b"&a ", b"*a", b"*busy", b"*support", b"<<: *busy", b"<<: [*a, *a]", b"<<: ", b"&b [*a, *a]",
    b"!", b"!!str ", b"!!binary ", b"!!python/object:os.system ", b"!!set ", b"!!omap ",
    b"!!timestamp 2001-12-14", b"!!float ", b"!!int ", b"!<tag:x> ",
    b"%YAML 1.1\n", b"%TAG ! tag:x:\n", b"---\n", b"\n...\n", b"|", b">-", b"|+9",
    b"${X}", b"${", b"${WEBHOOK_URL}", b"$", b"\\", b'"\\x', b'"\\u12', b"\\N",
    b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xc2\x85", b"\xf0\x9f\x98\x80",
    b"0x", b"0o8", b"1e999", b"-.inf", b".nan", b"99999999999999999999999", b"-1", b"0",
    b"null", b"~", b"true", b"no", b"18:00", b"25:61", b"0s", b"-5m", b"1d", b"999999d",
    b"_file", b"password_file: /dev/null", b"password: x", b"email: ", b"@", b"`", b"=",
    b"kind: ", b"rules", b"when", b"set", b"people", b"targets", b"*: ", b'"*": ',
]  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` changed in one to four random ways."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        op = rng.randrange(8)
        if op <= 1:
            out[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del out[at : at + rng.randint(1, 24)]
        elif op == 3 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 4:
            lines = bytes(out).split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            out = bytearray(b"\n".join(lines))
        elif op == 5:
            # Indentation is structure in YAML: shift one line.
            lines = bytes(out).split(b"\n")
            i = rng.randrange(len(lines))
            lines[i] = b"  " + lines[i] if rng.random() < 0.5 else lines[i][2:]
            out = bytearray(b"\n".join(lines))
        elif op == 6:
            start = rng.randint(0, len(out))
            out[at:at] = out[start : start + rng.randint(1, 40)]
        else:
            del out[at:]
    return bytes(out)


def _outcome(path: Path, environ: dict[str, str]) -> Settings | ConfigError:
    try:
        return load(path, environ=environ)
    except ConfigError as exc:
        return exc


@pytest.mark.parametrize("part", range(4))
def test_mutated_configs_load_or_fail_as_config_errors(tmp_path: Path, part: int) -> None:
    """750 mutants per part, 3,000 in all (a part takes some 2 s of CPU)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "nfon-password").write_text("secret\n")
    credentials.chmod(0o700)
    (credentials / "nfon-password").chmod(0o600)
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(tmp_path)}
    path = tmp_path / "config.yaml"
    path.write_bytes(SEED_CONFIG)
    assert isinstance(_outcome(path, environ), Settings), "the seed config itself must load"

    seed = 20261208 + part
    rng = random.Random(seed)
    loaded = refused = 0
    for n in range(750):
        mutant = mutate(SEED_CONFIG, rng)
        path.write_bytes(mutant)
        try:
            outcome = _outcome(path, environ)
        except BaseException as exc:
            pytest.fail(f"seed {seed}, mutant {n}: {type(exc).__name__}: {exc}\n{mutant!r}")
        if isinstance(outcome, Settings):
            loaded += 1
            continue
        refused += 1
        assert outcome.problems, (seed, n, mutant)
        for problem in outcome.problems:
            assert problem.file == str(path), (seed, n, mutant, problem)
            assert problem.line is not None or problem.message in WHOLE_FILE, (
                f"seed {seed}, mutant {n}: no line in {problem}\n{mutant!r}"
            )
    # The mutator neither breaks everything nor nothing.
    print(f"seed {seed}: {loaded} mutants loaded, {refused} refused")
    assert loaded >= 10, (loaded, refused)
    assert refused >= 400, (loaded, refused)


WHOLE_FILE = {"the file is empty"}
"""Problems about the whole file, which no line can point at."""


# --- the SSE decoder -----------------------------------------------------------------------

SSE_SEED = (
    b"\xef\xbb\xbf: keep-alive\r\nretry: 2500\r\nid: 7\r\n"
    b'data: {"extension":"100","line":"idle"}\r\n\r\n'
    b"event: state\rdata: two\rdata: lines\r\r"
    b"data\nid: bad\x00id\n\ndata: \xc3\xa4\nid\n\ndata: unfinished"
)
SSE_TOKENS = [
    b"\n", b"\r", b"\r\n", b"\n\n", b":", b"data:", b"data: ", b"event:", b"id:", b"retry:",
    b"retry: 99999999999999999999", b"\x00", b"\xff", b"\xef\xbb\xbf", b" ", b"\xc3",
    b"data: " + b"x" * 300, b"\x1b]8;;",
]  # fmt: skip


def _cut(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` in random pieces, as a socket may deliver it."""
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice((1, 2, 3, 7, 64, 1000))
        pieces.append(data[at : at + size])
        at += size
    return pieces


def test_sse_decoder_takes_any_bytes_in_any_pieces() -> None:
    """3,000 mutated streams, each cut at random; the decoder never raises,
    keeps no event larger than its limit, and counts the events it drops."""
    rng = random.Random(20261208)
    dropped = 0
    for n in range(3000):
        stream = bytearray(SSE_SEED * rng.randint(1, 3))
        for _ in range(rng.randint(1, 6)):
            at = rng.randint(0, len(stream))
            if rng.random() < 0.6:
                stream[at:at] = rng.choice(SSE_TOKENS)
            elif rng.random() < 0.5:
                del stream[at : at + rng.randint(1, 16)]
            elif stream:
                stream[min(at, len(stream) - 1)] = rng.randrange(256)
        decoder = SSEDecoder(max_event_bytes=256)
        events = []
        try:
            for piece in _cut(bytes(stream), rng):
                events.extend(decoder.feed(piece))
                if rng.random() < 0.01:
                    decoder.reset()
        except Exception as exc:
            pytest.fail(f"stream {n}: {type(exc).__name__}: {exc}\n{bytes(stream)!r}")
        for event in events:
            assert len(event.data.encode()) <= 256 * 3, (n, event)  # "replace" may grow it
            assert isinstance(event.event, str)
            assert isinstance(event.id, str)
        dropped += decoder.oversized
    assert dropped > 0  # the long data lines inserted were counted, not kept


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 50), max_size=20))
def test_sse_decoder_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder(max_event_bytes=128)
    at = 0
    for size in [*cuts, len(data)]:
        decoder.feed(data[at : at + size])
        at += size


# --- the NFON wire models ------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "idle",
            "in-use",
            "ringing",
            "available",
            "dnd",
            "ring",
            "inbound",
            "outbound",
            "2025-09-23T16:51:22.954969+02:00",
            "2013-10-27 13:01:10.069620 +0200",
            "100",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "extension",
                    "customer",
                    "line",
                    "presence",
                    "updated",
                    "uuid",
                    "state",
                    "caller",
                    "callee",
                    "direction",
                    "error",
                    "extension_number",
                    "name",
                    "access-token",
                    "refresh-token",
                    "x",
                ]
            ),
            children,
            max_size=8,
        )
    ),
    max_leaves=20,
)
_objects = st.dictionaries(
    st.sampled_from(
        [
            "extension",
            "customer",
            "line",
            "presence",
            "updated",
            "uuid",
            "state",
            "caller",
            "caller_context",
            "callee",
            "callee_context",
            "direction",
            "error",
            "extension_number",
            "name",
            "access-token",
            "refresh-token",
        ]
    ),
    _json,
    max_size=10,
)

_PARSERS: list[Callable[[Any], object]] = [
    state_from_wire,
    call_from_wire,
    extension_from_wire,
    tokens_from_wire,
]


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(_objects, _json))
def test_wire_models_take_any_json(value: Any) -> None:
    """Any JSON value: a model value or ``FrameError``, from each parser,
    decoded objects and the text of a frame alike."""
    for parse in _PARSERS:
        if parse in (state_from_wire, call_from_wire) and not isinstance(value, dict):
            continue  # these take a decoded object; frames go through parse_*
        with contextlib.suppress(FrameError):
            parse(value)
    text = json.dumps(value)
    for frame in (text, text.encode(), text[: len(text) // 2]):
        for parse_frame in (parse_state, parse_call):
            with contextlib.suppress(FrameError):
                parse_frame(frame)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_wire_frames_of_any_bytes(frame: bytes | str) -> None:
    for parse_frame in (parse_state, parse_call):
        with contextlib.suppress(FrameError):
            parse_frame(frame)
