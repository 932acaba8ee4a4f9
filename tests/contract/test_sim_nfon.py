"""The NFON simulator keeps the published CTI API contract.

Plain httpx over real loopback sockets (not the project's NFON client), so a
mistake in the client cannot hide a mistake in the simulator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from polling import eventually

from presence_sync.sim.nfon import NfonSim, SimHandle, serve, serve_in_thread

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CREDENTIALS = {"username": "api-user", "password": "api-secret"}
JSON = {"Accept": "application/json"}
SSE = {"Accept": "text/event-stream"}


@dataclass
class Frame:
    """One SSE event as it came off the wire: its field lines and comments."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]

    @property
    def data(self) -> Any:
        return json.loads("\n".join(self.values("data")))


class Stream:
    """Reads SSE frames from an open response; each read blocks at most the
    client's read timeout, which is the test's deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def frame(self) -> Frame | None:
        """The next frame, or None when the server ended the stream."""
        frame = Frame()
        for line in self._lines:
            if line == "":
                if frame.fields or frame.comments:
                    return frame
                continue
            if line.startswith(":"):
                frame.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            frame.fields.append((name, value.removeprefix(" ")))
        return None

    def event(self) -> Any:
        """The JSON payload of the next frame that carries data."""
        while True:
            frame = self.frame()
            assert frame is not None, "stream ended"
            if frame.values("data"):
                return frame.data

    def events(self, count: int) -> list[Any]:
        return [self.event() for _ in range(count)]


@dataclass
class Env:
    handle: SimHandle
    client: httpx.Client
    tokens: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access-token']}"}

    @contextmanager
    def stream(self, kind: str, **headers: str) -> Iterator[Stream]:
        with self.client.stream(
            "GET", f"/extensions/phone/{kind}", headers={**self.auth, **SSE, **headers}
        ) as response:
            assert response.status_code == 200
            yield Stream(response)


Serve = Callable[..., Env]


@pytest.fixture
def served() -> Iterator[Serve]:
    with_stack: list[Any] = []

    def start(**options: Any) -> Env:
        options.setdefault("extensions", 3)
        sim = NfonSim(**options)
        cm = serve_in_thread(sim)
        handle = cm.__enter__()
        client = httpx.Client(base_url=handle.base_url, timeout=5.0)
        with_stack.append((cm, client))
        response = client.post("/login", json=CREDENTIALS)
        assert response.status_code == 200
        return Env(handle, client, response.json())

    yield start
    for cm, client in reversed(with_stack):
        client.close()
        cm.__exit__(None, None, None)


# --- authentication ---------------------------------------------------------------------


def test_tokens_are_rs512_jwts_that_verify_with_the_published_jwks(served: Serve) -> None:
    env = served(token_lifetime=300.0, refresh_lifetime=3600.0, customer="K7777")
    jwks = env.client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    (key,) = jwks.json()["keys"]
    assert {k: key[k] for k in ("alg", "kty", "use")} == {
        "alg": "RS512",
        "kty": "RSA",
        "use": "sig",
    }
    public = jwt.PyJWK(key).key

    access = env.tokens["access-token"]
    claims = jwt.decode(access, public, algorithms=["RS512"])
    assert jwt.get_unverified_header(access)["kid"] == key["kid"]
    assert claims["sub"] == "api-user"
    assert claims["customer"] == "K7777"
    assert claims["typ"] == "access"
    assert claims["exp"] == claims["iat"] + 300
    assert claims["jti"]

    refresh = jwt.decode(env.tokens["refresh-token"], public, algorithms=["RS512"])
    assert refresh["typ"] == "refresh"
    assert refresh["exp"] == refresh["iat"] + 3600
    assert refresh["jti"] != claims["jti"]


def test_login_rejects_bad_bodies_and_wrong_credentials(served: Serve) -> None:
    env = served()
    cases = [
        (b"not json", 400),
        (b"[]", 400),
        (b'{"username": "api-user"}', 400),
        (b'{"username": "api-user", "password": 7}', 400),
        (b'{"username": "api-user", "password": "wrong"}', 401),
        (b'{"username": "someone", "password": "api-secret"}', 401),
    ]
    for body, status in cases:
        response = env.client.post(
            "/login", content=body, headers={"Content-Type": "application/json"}
        )
        assert (response.status_code, response.content) == (status, b""), body
    assert env.handle.sim.stats.login_failures == len(cases)


def test_refresh_rotates_both_tokens_and_a_used_refresh_token_is_dead(served: Serve) -> None:
    env = served()
    old = env.tokens
    renewed = env.client.put("/login", headers={"Authorization": f"Bearer {old['refresh-token']}"})
    assert renewed.status_code == 200
    pair = renewed.json()
    assert pair["access-token"] != old["access-token"]
    assert pair["refresh-token"] != old["refresh-token"]
    data = env.client.get(
        "/extensions/phone/data", headers={"Authorization": f"Bearer {pair['access-token']}"}
    )
    assert data.status_code == 200

    reused = env.client.put("/login", headers={"Authorization": f"Bearer {old['refresh-token']}"})
    assert (reused.status_code, reused.content) == (401, b"")
    as_refresh = env.client.put(
        "/login", headers={"Authorization": f"Bearer {pair['access-token']}"}
    )
    assert as_refresh.status_code == 401
    assert env.client.put("/login").status_code == 400
    stats = env.handle.sim.stats
    assert (stats.refreshes, stats.refresh_failures) == (1, 3)


def test_access_token_stops_working_after_its_lifetime(served: Serve) -> None:
    env = served(token_lifetime=0.5)
    assert env.client.get("/extensions/phone/data", headers=env.auth).status_code == 200
    last: list[httpx.Response] = []

    def rejected() -> bool:
        last[:] = [env.client.get("/extensions/phone/data", headers=env.auth)]
        return last[0].status_code == 401

    eventually(rejected, "the refused login", within=5.0)
    assert last[0].content == b""
    assert UUID.match(last[0].headers["X-Request-Id"])
    assert env.handle.sim.stats.unauthorized >= 1
    renewed = env.client.put(
        "/login", headers={"Authorization": f"Bearer {env.tokens['refresh-token']}"}
    )
    assert renewed.status_code == 200


def test_expire_tokens_invalidates_every_access_token_at_once(served: Serve) -> None:
    env = served()
    env.handle.sim.expire_tokens()
    assert env.client.get("/extensions/phone/data", headers=env.auth).status_code == 401
    fresh = env.client.post("/login", json=CREDENTIALS).json()["access-token"]
    headers = {"Authorization": f"Bearer {fresh}"}
    assert env.client.get("/extensions/phone/data", headers=headers).status_code == 200


def test_extension_endpoints_need_a_valid_bearer_token(served: Serve) -> None:
    env = served()
    refresh = f"Bearer {env.tokens['refresh-token']}"
    for authorization in (None, "Bearer", "Bearer not-a-token", "Basic YXBpOnNlY3JldA==", refresh):
        headers = {} if authorization is None else {"Authorization": authorization}
        for path in ("data", "states", "calls"):
            response = env.client.get(f"/extensions/phone/{path}", headers=headers)
            assert (response.status_code, response.content) == (401, b""), (authorization, path)
            assert "X-Request-Id" in response.headers
    assert env.handle.sim.stats.unauthorized == 15


def test_refused_logins_get_401_until_allowed_again(served: Serve) -> None:
    env = served()
    env.handle.sim.refuse_logins(True)
    refused = env.client.post("/login", json=CREDENTIALS)
    assert (refused.status_code, refused.content) == (401, b"")
    env.handle.sim.refuse_logins(False)
    assert env.client.post("/login", json=CREDENTIALS).status_code == 200
    stats = env.handle.sim.stats
    assert (stats.refused_logins, stats.logins) == (1, 2)


# --- snapshot and directory ---------------------------------------------------------------


def test_snapshot_lists_every_state_and_honours_the_extension_filter(served: Serve) -> None:
    env = served(extensions=[("100", "Anna"), ("420", "Ben"), ("2001", "Clara")])
    env.handle.sim.set_state("2001", line="in-use", presence="dnd")
    everything = env.client.get("/extensions/phone/states", headers={**env.auth, **JSON})
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("application/json")
    assert UUID.match(everything.headers["X-Request-Id"])
    states = everything.json()
    assert [s["extension"] for s in states] == ["100", "420", "2001"]
    for state in states:
        assert set(state) == {"extension", "customer", "line", "presence", "updated"}
        assert state["customer"] == "K1234"
        assert RFC3339_NANO.match(state["updated"])
    assert (states[2]["line"], states[2]["presence"]) == ("in-use", "dnd")
    assert (states[0]["line"], states[0]["presence"]) == ("idle", "available")

    repeated = env.client.get(
        "/extensions/phone/states?extension=100&extension=2001", headers={**env.auth, **JSON}
    )
    assert [s["extension"] for s in repeated.json()] == ["100", "2001"]
    commas = env.client.get(
        "/extensions/phone/states",
        params={"extension": "420,2001,999"},
        headers={**env.auth, **JSON},
    )
    assert [s["extension"] for s in commas.json()] == ["420", "2001"]


def test_phone_data_lists_extensions_with_their_names(served: Serve) -> None:
    env = served(extensions=[("100", "office"), ("101", "Ben Brandt")], customer="KLMN0")
    response = env.client.get("/extensions/phone/data", headers={**env.auth, **JSON})
    assert response.status_code == 200
    assert "X-Request-Id" in response.headers
    assert response.json() == [
        {"uuid": "100@KLMN0", "extension_number": "100", "name": "office"},
        {"uuid": "101@KLMN0", "extension_number": "101", "name": "Ben Brandt"},
    ]


def test_generated_extensions_are_numbered_from_100_with_names(served: Serve) -> None:
    env = served(extensions=5, seed=7)
    entries = env.client.get("/extensions/phone/data", headers=env.auth).json()
    assert [e["extension_number"] for e in entries] == ["100", "101", "102", "103", "104"]
    assert all(e["name"].strip() for e in entries)


# --- state stream -------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["text/event-stream", "", "*/*"])
def test_state_stream_bootstraps_every_extension_then_streams_changes(
    served: Serve, accept: str
) -> None:
    env = served()
    with env.client.stream(
        "GET", "/extensions/phone/states", headers={**env.auth, "Accept": accept}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "X-Request-Id" in response.headers
        stream = Stream(response)
        frames = [stream.frame() for _ in range(3)]
        assert [f.data["extension"] for f in frames if f] == ["100", "101", "102"]
        for frame in frames:
            assert frame is not None
            # The real API documents neither event names nor ids.
            assert [name for name, _ in frame.fields] == ["data"]
        env.handle.sim.set_state("101", presence="away")
        change = stream.event()
        assert change["extension"] == "101"
        assert change["presence"] == "away"
        assert RFC3339_NANO.match(change["updated"])
    assert env.handle.sim.stats.stream_connects["states"] == 1


def test_state_stream_takes_values_outside_the_enums(served: Serve) -> None:
    env = served()
    with env.stream("states") as stream:
        stream.events(3)
        env.handle.sim.set_state("100", line="teleporting", presence="null")
        assert stream.event() | {"updated": ""} == {
            "extension": "100",
            "customer": "K1234",
            "line": "teleporting",
            "presence": "null",
            "updated": "",
        }


def test_unsupported_accept_on_states_is_406(served: Serve) -> None:
    env = served()
    response = env.client.get(
        "/extensions/phone/states", headers={**env.auth, "Accept": "text/html"}
    )
    assert response.status_code == 406
    assert "error" in response.json()


def test_event_ids_and_last_event_id_still_get_the_bootstrap(served: Serve) -> None:
    env = served(event_ids=True)
    with env.stream("states", **{"Last-Event-ID": "41"}) as stream:
        frames = [stream.frame() for _ in range(3)]
        assert all(f is not None and f.values("id") for f in frames)
        env.handle.sim.set_state("102", line="offline")
        frame = stream.frame()
        assert frame is not None
        assert frame.data["line"] == "offline"
        ids = [int(f.values("id")[0]) for f in frames if f]
        assert int(frame.values("id")[0]) > max(ids)
    stats = env.handle.sim.stats
    assert (stats.last_event_id_headers, stats.last_event_ids) == (1, ("41",))


def test_keepalive_comments_arrive_when_idle(served: Serve) -> None:
    env = served(keepalive=0.1)
    with env.stream("states") as stream:
        stream.events(3)
        frame = stream.frame()
        assert frame is not None
        assert (frame.fields, frame.comments) == ([], ["keepalive"])


def test_drop_streams_ends_open_streams(served: Serve) -> None:
    env = served()
    with env.stream("states") as states, env.stream("calls") as calls:
        states.events(3)
        eventually(lambda: env.handle.sim.stats.open_streams == {"states": 1, "calls": 1})
        env.handle.sim.drop_streams()
        assert states.frame() is None
        assert calls.frame() is None
    eventually(lambda: env.handle.sim.stats.open_streams == {"states": 0, "calls": 0})


def test_streams_survive_token_expiry_by_default(served: Serve) -> None:
    env = served(token_lifetime=0.5, keepalive=0.1)
    with env.stream("states") as stream:
        stream.events(3)

        def token_dead() -> bool:
            assert stream.frame() is not None  # keep-alives keep coming meanwhile
            return env.client.get("/extensions/phone/data", headers=env.auth).status_code == 401

        eventually(token_dead)
        env.handle.sim.set_state("100", presence="busy")
        assert stream.event()["presence"] == "busy"


def test_streams_can_be_closed_when_their_token_expires(served: Serve) -> None:
    env = served(token_lifetime=0.5, close_streams_on_token_expiry=True, keepalive=None)
    with env.stream("states") as stream:
        stream.events(3)
        assert stream.frame() is None  # ends by itself, within the read timeout


def test_expire_tokens_closes_streams_when_so_configured(served: Serve) -> None:
    env = served(close_streams_on_token_expiry=True)
    with env.stream("calls") as stream:
        env.handle.sim.expire_tokens()
        assert stream.frame() is None


def test_a_client_that_stops_reading_is_dropped(served: Serve) -> None:
    env = served(max_stream_buffer=10_000)
    with env.stream("states") as stream:
        stream.events(3)

        def burst(sim: NfonSim) -> None:
            for i in range(2_000):
                sim.set_state("100", presence=("away", "busy")[i % 2])

        env.handle.sim.run(burst)
        assert stream.frame() is None
    eventually(lambda: env.handle.sim.stats.stream_overflows == 1)


def test_inject_raw_writes_text_verbatim(served: Serve) -> None:
    env = served()
    with env.stream("states") as stream:
        stream.events(3)
        assert env.handle.sim.inject_raw("states", "data: {not json\n\n: hello\n\n") == 1
        frame = stream.frame()
        assert frame is not None
        assert frame.values("data") == ["{not json"]
        frame = stream.frame()
        assert frame is not None
        assert frame.comments == ["hello"]


# --- calls --------------------------------------------------------------------------------


def test_inbound_call_moves_the_line_and_emits_ring_answer_hangup(served: Serve) -> None:
    env = served()
    with env.stream("states") as states, env.stream("calls") as calls:
        states.events(3)
        sim = env.handle.sim
        call_id = sim.ring("100", party="4930999888")
        sim.answer(call_id)
        sim.hangup(call_id)
        assert [s["line"] for s in states.events(3)] == ["ringing", "in-use", "idle"]
        events = calls.events(3)
    assert [e["state"] for e in events] == ["ring", "answer", "hangup"]
    for event in events:
        assert event | {"state": "", "updated": ""} == {
            "uuid": call_id,
            "state": "",
            "caller": "4930999888",
            "caller_context": "global",
            "callee": "100",
            "callee_context": "K1234",
            "direction": "inbound",
            "extension": "100",
            "customer": "K1234",
            "updated": "",
        }
        assert RFC3339_NANO.match(event["updated"])
    assert UUID.match(call_id)


def test_internal_call_affects_both_lines_with_their_own_direction(served: Serve) -> None:
    env = served()
    with env.stream("states") as states, env.stream("calls") as calls:
        states.events(3)
        sim = env.handle.sim
        call_id = sim.ring("100", direction="outbound", party="101", external=False)
        ring = calls.events(2)
        assert {(e["extension"], e["direction"]) for e in ring} == {
            ("100", "outbound"),
            ("101", "inbound"),
        }
        for event in ring:
            assert (event["caller"], event["callee"]) == ("100", "101")
            assert event["caller_context"] == event["callee_context"] == "K1234"
        assert {(s["extension"], s["line"]) for s in states.events(2)} == {
            ("100", "in-use"),
            ("101", "ringing"),
        }
        sim.answer(call_id)
        assert [(s["extension"], s["line"]) for s in states.events(1)] == [("101", "in-use")]
        sim.hangup(call_id)
        assert {(s["extension"], s["line"]) for s in states.events(2)} == {
            ("100", "idle"),
            ("101", "idle"),
        }
        states_of_calls = [e["state"] for e in calls.events(4)]
    assert states_of_calls == ["answer", "answer", "hangup", "hangup"]


def test_calls_stream_sends_nothing_from_the_past(served: Serve) -> None:
    env = served()
    sim = env.handle.sim
    earlier = sim.call("100")
    with env.stream("calls") as calls:
        sim.hangup(earlier)
        later = sim.ring("101")
        first, second = calls.events(2)
    assert (first["uuid"], first["state"]) == (earlier, "hangup")
    assert (second["uuid"], second["state"]) == (later, "ring")


@pytest.mark.parametrize(("accept", "status"), [("application/json", 406), ("*/*", 200)])
def test_calls_stream_needs_an_accept_that_allows_event_streams(
    served: Serve, accept: str, status: int
) -> None:
    env = served()
    with env.client.stream(
        "GET", "/extensions/phone/calls", headers={**env.auth, "Accept": accept}
    ) as response:
        assert response.status_code == status
        assert "X-Request-Id" in response.headers
        if status == 406:
            response.read()
            assert set(response.json()) == {"error"}


def test_scripting_mistakes_raise_clear_errors(served: Serve) -> None:
    env = served()
    sim = env.handle.sim
    with pytest.raises(KeyError, match="999"):
        sim.set_state("999", line="idle")
    with pytest.raises(ValueError, match="direction"):
        sim.ring("100", direction="sideways")
    call_id = sim.call("100")
    with pytest.raises(ValueError, match="already answered"):
        sim.answer(call_id)
    sim.hangup(call_id)
    with pytest.raises(KeyError):
        sim.hangup(call_id)
    with pytest.raises(ValueError, match="400-599"):
        sim.fail_next("/login", 200)


def test_the_thread_proxy_offers_the_public_face_only(served: Serve) -> None:
    env = served(extensions=[("100", "Anna")])
    proxy = env.handle.sim
    assert proxy.set_state.__doc__ == NfonSim.set_state.__doc__
    proxy.set_state("100", presence="away")
    assert proxy.state_of("100")["presence"] == "away"
    assert proxy.run(lambda sim: sim.state_of("100")["presence"]) == "away"
    assert proxy.customer == "K1234"
    with pytest.raises(AttributeError):
        getattr(proxy, "_exts")  # noqa: B009 - the point is the private name
    with pytest.raises(AttributeError):
        getattr(proxy, "no_such_method")  # noqa: B009 - mypy would refuse the attribute


def test_added_and_removed_extensions_show_everywhere(served: Serve) -> None:
    env = served()
    sim = env.handle.sim
    with env.stream("states") as states, env.stream("calls") as calls:
        states.events(3)
        sim.add_extension("555", "Lobby")
        assert states.event()["extension"] == "555"
        call_id = sim.call("555")
        sim.remove_extension("555")
        assert [e["state"] for e in calls.events(3)] == ["ring", "answer", "hangup"]
        assert call_id not in sim.active_calls()
    numbers = [
        e["extension_number"]
        for e in env.client.get("/extensions/phone/data", headers=env.auth).json()
    ]
    assert numbers == ["100", "101", "102"]


# --- faults, stats, control API -----------------------------------------------------------


def test_fail_next_answers_matching_requests_with_the_given_status(served: Serve) -> None:
    env = served()
    env.handle.sim.fail_next("/extensions/phone/data", 503, count=2)
    for _ in range(2):
        failed = env.client.get("/extensions/phone/data", headers=env.auth)
        assert failed.status_code == 503
        assert set(failed.json()) == {"error"}
        assert UUID.match(failed.headers["X-Request-Id"])
    assert (
        env.client.get("/extensions/phone/states", headers={**env.auth, **JSON}).status_code == 200
    )
    assert env.client.get("/extensions/phone/data", headers=env.auth).status_code == 200

    env.handle.sim.fail_next("/v1/login", 500)
    assert env.client.post("/login", json=CREDENTIALS).status_code == 500
    assert env.client.post("/login", json=CREDENTIALS).status_code == 200
    assert env.handle.sim.stats.injected_failures == 3


def test_fail_next_can_add_retry_after(served: Serve) -> None:
    env = served()
    date = "Mon, 02 Mar 2026 10:02:00 GMT"
    env.handle.sim.fail_next("/extensions/phone/data", 429, retry_after=30)
    env.handle.sim.fail_next("/extensions/phone/data", 503, retry_after=date)
    answers = [env.client.get("/extensions/phone/data", headers=env.auth) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 503, 200]
    assert [a.headers.get("Retry-After") for a in answers] == ["30", date, None]


def test_unknown_paths_get_the_spec_error_shape(served: Serve) -> None:
    env = served()
    response = env.client.get("/extensions/phone/nothing", headers=env.auth)
    assert response.status_code == 404
    assert set(response.json()) == {"error"}
    assert "X-Request-Id" in response.headers


def test_user_agent_of_every_request_is_recorded(served: Serve) -> None:
    env = served()
    agent = "presence-sync/0.1.0 (K1234)"
    env.client.get("/extensions/phone/data", headers={**env.auth, "User-Agent": agent})
    stats = env.handle.sim.stats
    assert stats.last_user_agent == agent
    assert stats.distinct_user_agents == {agent, f"python-httpx/{httpx.__version__}"}
    assert stats.requests_by_path == {"POST /login": 1, "GET /extensions/phone/data": 1}


def test_control_api_drives_the_simulator_over_http(served: Serve) -> None:
    env = served()
    control = httpx.Client(base_url=f"{env.handle.origin}/_sim", timeout=5.0)
    with control, env.stream("calls") as calls:
        assert control.post("/state", json={"extension": "101", "presence": "dnd"}).json() == {
            "ok": True
        }
        call_id = control.post("/call", json={"extension": "100", "answer": True}).json()["uuid"]
        assert [e["state"] for e in calls.events(2)] == ["ring", "answer"]
        states = {s["extension"]: s for s in control.get("/states").json()}
        assert (states["100"]["line"], states["101"]["presence"]) == ("in-use", "dnd")
        assert control.post("/answer", json={"uuid": call_id}).status_code == 409
        assert control.post("/hangup", json={"uuid": call_id}).status_code == 200
        assert control.post("/hangup", json={"uuid": call_id}).status_code == 404
        assert control.post("/state", json={"extension": "999"}).status_code == 404
        assert control.post("/state", content=b"[1]").status_code == 400
        assert control.post("/raw", json={"stream": "calls", "text": ": hi\n\n"}).json() == {
            "streams": 1
        }
        assert calls.event()["state"] == "hangup"
        frame = calls.frame()
        assert frame is not None
        assert frame.comments == ["hi"]

        assert (
            control.post(
                "/fail", json={"path": "/extensions/phone/data", "status": 500}
            ).status_code
            == 200
        )
        assert env.client.get("/extensions/phone/data", headers=env.auth).status_code == 500
        assert control.post("/expire-tokens").status_code == 200
        assert env.client.get("/extensions/phone/data", headers=env.auth).status_code == 401
        assert control.post("/logins", json={"refuse": True}).status_code == 200
        assert env.client.post("/login", json=CREDENTIALS).status_code == 401
        assert control.post("/drop").status_code == 200
        assert calls.frame() is None
        stats = control.get("/stats").json()
        assert (stats["refused_logins"], stats["injected_failures"]) == (1, 1)
        assert stats["stream_connects"] == {"states": 0, "calls": 1}


def test_random_traffic_changes_states_and_leaves_lines_idle_when_stopped(served: Serve) -> None:
    env = served(extensions=10)
    sim = env.handle.sim
    with env.stream("states") as states:
        states.events(10)
        sim.start_traffic(200.0, mean_call_seconds=0.2, seed=3)
        seen = {(s["line"], s["presence"]) for s in states.events(60)}
        sim.stop_traffic()
    assert any(line != "idle" for line, _ in seen)
    assert any(presence != "available" for _, presence in seen)
    assert sim.active_calls() == []
    assert {s["line"] for s in sim.states()} == {"idle"}


async def test_serve_runs_on_the_current_loop() -> None:
    sim = NfonSim(extensions=2)
    async with serve(sim) as handle, httpx.AsyncClient(base_url=handle.base_url) as client:
        tokens = (await client.post("/login", json=CREDENTIALS)).json()
        handle.sim.set_state("101", line="offline")
        snapshot = await client.get(
            "/extensions/phone/states",
            headers={"Authorization": f"Bearer {tokens['access-token']}", **JSON},
        )
    assert [s["line"] for s in snapshot.json()] == ["idle", "offline"]


# --- click-to-dial: POST and DELETE /extensions/phone/calls ------------------------------

CLICK_TO_DIAL = {
    "caller": "100",
    "caller_context": "K1234",
    "callee": "49123456789",
    "callee_context": "global",
    "extension": "100",
}


def _place(
    env: Env, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return env.client.post(
        "/extensions/phone/calls",
        json=body or CLICK_TO_DIAL,
        headers={**env.auth, **(headers or {})},
    )


@pytest.mark.parametrize("accept", [None, "application/json"])
def test_click_to_dial_answers_202_with_the_start_event(served: Serve, accept: str | None) -> None:
    env = served(answer_delay=None)
    response = _place(env, headers={"Accept": accept} if accept else None)
    assert response.status_code == 202
    assert "X-Request-Id" in response.headers
    start = response.json()
    assert start | {"uuid": "", "updated": ""} == {
        **CLICK_TO_DIAL,
        "uuid": "",
        "direction": "outbound",
        "state": "start",
        "updated": "",
    }
    assert UUID.match(start["uuid"])
    assert RFC3339_NANO.match(start["updated"])


def test_click_to_dial_rings_the_caller_then_goes_in_use_and_cancel_hangs_up(
    served: Serve,
) -> None:
    env = served(answer_delay=None)
    sim = env.handle.sim
    with env.stream("states") as states, env.stream("calls") as calls:
        states.events(3)
        call_id = _place(env).json()["uuid"]
        assert [(s["extension"], s["line"]) for s in states.events(1)] == [("100", "ringing")]
        assert [e["state"] for e in calls.events(2)] == ["caller-dial", "caller-ring"]
        sim.answer_caller(call_id)
        assert [(s["extension"], s["line"]) for s in states.events(1)] == [("100", "in-use")]
        progress = calls.events(3)
        assert [e["state"] for e in progress] == ["caller-answer", "dial", "ring"]
        assert {(e["uuid"], e["extension"], e["direction"]) for e in progress} == {
            (call_id, "100", "outbound")
        }
        cancelled = env.client.delete(f"/extensions/phone/calls/{call_id}", headers=env.auth)
        assert cancelled.status_code == 204
        assert "X-Request-Id" in cancelled.headers
        assert [(s["extension"], s["line"]) for s in states.events(1)] == [("100", "idle")]
        assert [e["state"] for e in calls.events(1)] == ["hangup"]
    assert sim.active_calls() == []


def test_the_simulated_device_answers_by_itself_after_the_delay(served: Serve) -> None:
    env = served(answer_delay=0.05)
    with env.stream("states") as states:
        states.events(3)
        _place(env)
        assert [s["line"] for s in states.events(2)] == ["ringing", "in-use"]


def test_click_to_dial_streams_start_to_end_for_text_event_stream(served: Serve) -> None:
    env = served(answer_delay=0.0)
    sim = env.handle.sim
    with env.client.stream(
        "POST", "/extensions/phone/calls", json=CLICK_TO_DIAL, headers={**env.auth, **SSE}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        events = stream.events(6)
        assert [e["state"] for e in events] == [
            "start", "caller-dial", "caller-ring", "caller-answer", "dial", "ring",
        ]  # fmt: skip
        assert {e["uuid"] for e in events} == {events[0]["uuid"]}
        assert set(events[1]) == {"uuid", "state", "updated"}
        sim.cancel(events[0]["uuid"])
        end = stream.event()
        assert (end["state"], end["error"]) == ("end", "cancel")
        assert stream.frame() is None


def test_unanswered_click_to_dial_ends_with_timeout_after_its_timeout(served: Serve) -> None:
    env = served(answer_delay=None)
    sim = env.handle.sim
    with env.client.stream(
        "POST",
        "/extensions/phone/calls",
        json={**CLICK_TO_DIAL, "timeout": 1},
        headers={**env.auth, **SSE},
    ) as response:
        stream = Stream(response)
        assert [e["state"] for e in stream.events(3)] == ["start", "caller-dial", "caller-ring"]
        end = stream.event()
    assert (end["state"], end["error"]) == ("end", "timeout")
    assert sim.state_of("100")["line"] == "idle"


def test_callee_answering_ends_the_request_and_the_call_cannot_be_cancelled(
    served: Serve,
) -> None:
    env = served(answer_delay=0.0)
    sim = env.handle.sim
    with env.stream("states") as states:
        states.events(3)
        call_id = _place(env, {**CLICK_TO_DIAL, "callee": "101", "callee_context": "K1234"}).json()[
            "uuid"
        ]
        seen = {(s["extension"], s["line"]) for s in states.events(3)}
        assert seen == {("100", "ringing"), ("100", "in-use"), ("101", "ringing")}
        sim.answer(call_id)
        assert [(s["extension"], s["line"]) for s in states.events(1)] == [("101", "in-use")]
    gone = env.client.delete(f"/extensions/phone/calls/{call_id}", headers=env.auth)
    assert gone.status_code == 404
    assert set(gone.json()) == {"error"}
    sim.hangup(call_id)
    assert {sim.state_of(ext)["line"] for ext in ("100", "101")} == {"idle"}


def test_calling_your_own_extension_is_busy(served: Serve) -> None:
    env = served(answer_delay=0.0)
    with env.client.stream(
        "POST",
        "/extensions/phone/calls",
        json={**CLICK_TO_DIAL, "callee": "100", "callee_context": "K1234"},
        headers={**env.auth, **SSE},
    ) as response:
        events = Stream(response).events(5)
    assert [e["state"] for e in events] == [
        "start", "caller-dial", "caller-ring", "caller-answer", "end",
    ]  # fmt: skip
    assert events[-1]["error"] == "busy"
    assert env.handle.sim.state_of("100")["line"] == "idle"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"callee": "49123456789"}, 400),
        ({**CLICK_TO_DIAL, "callee": "+49123456789"}, 400),
        ({**CLICK_TO_DIAL, "callee": "0049123456789"}, 400),
        ({**CLICK_TO_DIAL, "timeout": 121}, 400),
        ({**CLICK_TO_DIAL, "caller_context": "K9999"}, 400),
        ({**CLICK_TO_DIAL, "callee_context": "conference"}, 400),
        ({**CLICK_TO_DIAL, "caller": "999", "extension": "999"}, 404),
    ],
)
def test_click_to_dial_refuses_bad_requests_in_the_spec_error_shape(
    served: Serve, body: dict[str, Any], status: int
) -> None:
    env = served()
    response = _place(env, body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert "X-Request-Id" in response.headers
    assert env.handle.sim.active_calls() == []


def test_cancel_checks_the_uuid_pattern_and_that_the_call_exists(served: Serve) -> None:
    env = served()
    bad = env.client.delete("/extensions/phone/calls/not-a-uuid", headers=env.auth)
    assert bad.status_code == 400
    assert set(bad.json()) == {"error"}
    unknown = env.client.delete(
        "/extensions/phone/calls/715a1333-0174-40ea-8b38-67e289069476", headers=env.auth
    )
    assert unknown.status_code == 404
    unauthenticated = env.client.delete(
        "/extensions/phone/calls/715a1333-0174-40ea-8b38-67e289069476"
    )
    assert unauthenticated.status_code == 401
    assert _place(env, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_answer_delay_is_a_control_call(served: Serve) -> None:
    env = served(answer_delay=None)
    control = httpx.post(env.handle.origin + "/_sim/answer-delay", json={"seconds": 0})
    assert control.status_code == 200
    with env.stream("states") as states:
        states.events(3)
        _place(env)
        assert [s["line"] for s in states.events(2)] == ["ringing", "in-use"]
    refused = httpx.post(env.handle.origin + "/_sim/answer-delay", json={"seconds": "soon"})
    assert refused.status_code == 400
