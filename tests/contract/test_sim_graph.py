"""The Graph simulator keeps Entra ID's and Graph's published contracts.

The real ``msal.ConfidentialClientApplication`` (secret and certificate) and
plain httpx over TLS, trusting only the simulator's CA, so a mistake in the
project's own Graph client cannot hide a mistake in the simulator.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from typing import Any

import httpx
import jwt
import msal
import pytest
import requests
from polling import eventually

from presence_sync.sim.certs import KeyPair, client_certificate
from presence_sync.sim.graph import GraphHandle, GraphSim, SimClock, serve, serve_in_thread

SECRET = "s3cret-value"
ANNA_UPN = "anna@contoso.example"
BEN_UPN = "ben.b@contoso.onmicrosoft.com"
BEN_MAIL = "ben@contoso.example"


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def sim(clock: SimClock) -> GraphSim:
    return GraphSim(clock=clock, token_lifetime=3600)


@pytest.fixture
def client_id(sim: GraphSim) -> str:
    return sim.register_app(secret=SECRET)


@pytest.fixture
def anna(sim: GraphSim) -> str:
    return sim.add_user(ANNA_UPN)


@pytest.fixture
def ben(sim: GraphSim) -> str:
    return sim.add_user(BEN_UPN, mail=BEN_MAIL, display_name="Ben Brandt")


@pytest.fixture
def handle(sim: GraphSim) -> Iterator[GraphHandle]:
    with serve_in_thread(sim) as running:
        yield running


MakeApp = Callable[..., msal.ConfidentialClientApplication]
GetToken = Callable[..., str]


def _session(ca_bundle: str) -> requests.Session:
    # requests lets $REQUESTS_CA_BUNDLE override a session's ``verify``
    # unless trust_env is off, so the CA is pinned on a session of our own.
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_bundle
    return session


def _trust(handle: GraphHandle) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(handle.ca_path))


@pytest.fixture
def make_app(handle: GraphHandle) -> Iterator[MakeApp]:
    """``make_app(client_id, credential, tenant=None)``: a real MSAL app
    trusting only the simulator's CA (closed before the server stops)."""
    sessions: list[requests.Session] = []

    def make(
        client_id: str, credential: Any, tenant: str | None = None
    ) -> msal.ConfidentialClientApplication:
        sessions.append(_session(str(handle.ca_path)))
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential=credential,
            authority=handle.authority(tenant),
            instance_discovery=False,
            http_client=sessions[-1],
        )

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def get_token(handle: GraphHandle, make_app: MakeApp) -> GetToken:
    """``get_token(client_id, credential=SECRET)``: a fresh app's access token."""

    def get(client_id: str, credential: Any = SECRET) -> str:
        result = make_app(client_id, credential).acquire_token_for_client([handle.scope])
        assert "access_token" in result, result
        return str(result["access_token"])

    return get


def graph(handle: GraphHandle, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(
        base_url=f"{handle.graph_url}/v1.0",
        verify=_trust(handle),
        headers=headers,
        timeout=timeout,
    )


@pytest.fixture
def api(handle: GraphHandle, client_id: str, get_token: GetToken) -> Iterator[httpx.Client]:
    with graph(handle, get_token(client_id)) as client:
        yield client


def graph_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert Graph's error shape; return the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert {"date", "request-id"} <= set(error["innerError"])
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


def set_presence(
    api: httpx.Client, user: str, session: str, pair: str, duration: str | None = "PT15M"
) -> httpx.Response:
    availability, activity = pair.split("/")
    body = {"sessionId": session, "availability": availability, "activity": activity}
    if duration is not None:
        body["expirationDuration"] = duration
    return api.post(f"/users/{user}/presence/setPresence", json=body)


def shown(api: httpx.Client, user: str) -> str:
    response = api.get(f"/users/{user}/presence")
    assert response.status_code == 200, response.text
    body = response.json()
    return f"{body['availability']}/{body['activity']}"


# -- identity ----------------------------------------------------------------


def test_secret_token_is_a_graph_token_with_the_granted_roles(
    sim: GraphSim, handle: GraphHandle, client_id: str, get_token: GetToken
) -> None:
    claims = jwt.decode(get_token(client_id), options={"verify_signature": False})
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["tid"] == sim.tenant
    assert claims["appid"] == client_id
    assert set(claims["roles"]) == {
        "Presence.ReadWrite.All",
        "User.Read.All",
        "Calendars.ReadWrite",
    }
    assert claims["exp"] - claims["iat"] == 3600


def test_msal_caches_the_token_until_it_nears_expiry(
    sim: GraphSim, handle: GraphHandle, client_id: str, make_app: MakeApp
) -> None:
    app = make_app(client_id, SECRET)
    first = app.acquire_token_for_client([handle.scope])
    second = app.acquire_token_for_client([handle.scope])
    assert first["token_source"] == "identity_provider"
    assert second["token_source"] == "cache"
    assert len(sim.requests("/" + sim.tenant + "/oauth2/v2.0/token")) == 1


@pytest.mark.parametrize("form", ["sha1-thumbprint", "public-certificate"])
def test_certificate_credentials_work(
    sim: GraphSim, handle: GraphHandle, anna: str, form: str, get_token: GetToken
) -> None:
    pair = client_certificate("presence-sync")
    client_id = sim.register_app(certificate_pem=pair.cert_pem)
    credential: dict[str, str] = {"private_key": pair.key_pem.decode()}
    if form == "sha1-thumbprint":  # RS256 with x5t
        credential["thumbprint"] = pair.sha1_thumbprint
    else:  # PS256 with x5t#S256
        credential["public_certificate"] = pair.cert_pem.decode()
    with graph(handle, get_token(client_id, credential)) as api:
        assert api.get(f"/users/{anna}").status_code == 200


def test_instance_discovery_pointed_at_the_simulator_works(
    sim: GraphSim, handle: GraphHandle, client_id: str
) -> None:
    session = _session(str(handle.ca_path))
    try:
        app = msal.ConfidentialClientApplication(
            client_id,
            client_credential=SECRET,
            authority=handle.authority(),
            instance_discovery=f"{handle.origin}/common/discovery/instance",
            http_client=session,
        )
        assert "access_token" in app.acquire_token_for_client([handle.scope])
    finally:
        session.close()
    assert sim.requests()[0].path == "/common/discovery/instance"


def test_a_certificate_not_on_the_app_is_refused(
    sim: GraphSim, handle: GraphHandle, make_app: MakeApp
) -> None:
    registered, other = client_certificate(), client_certificate()
    client_id = sim.register_app(certificate_pem=registered.cert_pem)
    result = make_app(
        client_id,
        {"private_key": other.key_pem.decode(), "thumbprint": other.sha1_thumbprint},
    ).acquire_token_for_client([handle.scope])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def test_an_assertion_signed_by_another_key_is_refused(
    sim: GraphSim, handle: GraphHandle, make_app: MakeApp
) -> None:
    registered, other = client_certificate(), client_certificate()
    client_id = sim.register_app(certificate_pem=registered.cert_pem)
    # The registered certificate's thumbprint, but the other certificate's key.
    forged = KeyPair(registered.cert_pem, other.key_pem)
    result = make_app(
        client_id,
        {"private_key": forged.key_pem.decode(), "thumbprint": forged.sha1_thumbprint},
    ).acquire_token_for_client([handle.scope])
    assert result["error_codes"] == [700027]
    assert "signature" in result["error_description"]


@pytest.mark.parametrize(
    ("change", "code"),
    [({}, None), ({"aud": "https://elsewhere.example/token"}, 700212),
     ({"iss": "someone-else"}, 700021), ({"exp_offset": -1200}, 700024)],
)  # fmt: skip
def test_client_assertion_claims_are_checked(
    sim: GraphSim, handle: GraphHandle, change: dict[str, Any], code: int | None
) -> None:
    pair = client_certificate()
    client_id = sim.register_app(certificate_pem=pair.cert_pem)
    endpoint = f"{handle.authority()}/oauth2/v2.0/token"
    now = int(sim.now().timestamp())
    claims = {"aud": endpoint, "iss": client_id, "sub": client_id, "jti": "1",
              "nbf": now, "exp": now + 600 + change.pop("exp_offset", 0), **change}  # fmt: skip
    assertion = jwt.encode(claims, pair.key_pem, algorithm="RS256", headers={"x5t": pair.x5t})
    with httpx.Client(verify=_trust(handle)) as client:
        response = client.post(
            endpoint,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
                "scope": handle.scope,
            },
        )
    if code is None:
        assert response.status_code == 200
        assert response.json()["token_type"] == "Bearer"
    else:
        assert response.status_code == 401
        assert response.json()["error_codes"] == [code]


def test_wrong_secret_gets_an_aadsts_error(
    handle: GraphHandle, client_id: str, make_app: MakeApp
) -> None:
    result = make_app(client_id, "not-the-secret").acquire_token_for_client([handle.scope])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: ")
    assert {"trace_id", "correlation_id", "timestamp"} <= set(result)


def test_unknown_app_and_unknown_tenant_are_refused(handle: GraphHandle, make_app: MakeApp) -> None:
    result = make_app("00000000-0000-0000-0000-00000000dead", SECRET)
    refused = result.acquire_token_for_client([handle.scope])
    assert refused["error"] == "unauthorized_client"
    assert refused["error_codes"] == [700016]
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        make_app("x", SECRET, tenant="no-such-tenant")
    with httpx.Client(verify=_trust(handle)) as client:
        discovery = client.get(
            f"{handle.origin}/no-such-tenant/v2.0/.well-known/openid-configuration"
        )
        token = client.post(
            f"{handle.origin}/no-such-tenant/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y",
                  "scope": "https://graph.microsoft.com/.default"},
        )  # fmt: skip
    for response in (discovery, token):
        assert response.status_code == 400
        assert response.json()["error_codes"] == [90002]


def test_scope_must_be_a_known_resource_with_default(
    handle: GraphHandle, client_id: str, make_app: MakeApp
) -> None:
    app = make_app(client_id, SECRET)
    refused = app.acquire_token_for_client(["https://graph.microsoft.com/User.Read.All"])
    assert refused["error"] == "invalid_scope"
    # The simulator's own URL is a resource too, as a national cloud's Graph host would be.
    accepted = app.acquire_token_for_client([f"{handle.graph_url}/.default"])
    assert "access_token" in accepted


def test_token_requests_are_logged_without_secrets(
    sim: GraphSim, handle: GraphHandle, client_id: str, get_token: GetToken
) -> None:
    get_token(client_id)
    (entry,) = sim.requests(f"/{sim.tenant}/oauth2/v2.0/token")
    assert entry.body["client_secret"] == "***"
    assert entry.client_id == client_id
    assert SECRET not in repr(sim.requests())


# -- Graph: tokens and permissions ---------------------------------------------


def test_expired_token_gets_401_with_www_authenticate(
    clock: SimClock, api: httpx.Client, anna: str
) -> None:
    assert api.get(f"/users/{anna}").status_code == 200
    clock.advance(3600)
    response = api.get(f"/users/{anna}")
    assert "expired" in graph_error(response, 401, "InvalidAuthenticationToken")
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("header", "what"),
    [(None, "empty"), ("Bearer not.a.jwt", "validation"), ("Basic abc", "empty")],
)
def test_missing_or_garbage_token_gets_401(
    handle: GraphHandle, anna: str, header: str | None, what: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    with graph(handle) as client:
        response = client.get(f"/users/{anna}/presence", headers=headers)
    assert what in graph_error(response, 401, "InvalidAuthenticationToken")
    assert "WWW-Authenticate" in response.headers


def test_token_of_another_tenant_gets_401(
    sim: GraphSim, handle: GraphHandle, anna: str, make_app: MakeApp
) -> None:
    stranger = sim.register_app(tenant="other-tenant", secret=SECRET)
    app = make_app(stranger, SECRET, tenant="other-tenant")
    token = app.acquire_token_for_client([handle.scope])["access_token"]
    with graph(handle, token) as client:
        response = client.get(f"/users/{anna}")
    assert "tenant" in graph_error(response, 401, "InvalidAuthenticationToken")


def test_missing_permission_gets_403(
    sim: GraphSim, handle: GraphHandle, anna: str, get_token: GetToken
) -> None:
    client_id = sim.register_app(secret=SECRET, roles=["User.Read.All"])
    with graph(handle, get_token(client_id)) as client:
        assert client.get(f"/users/{anna}").status_code == 200
        graph_error(set_presence(client, anna, client_id, "Busy/InACall"), 403, "Forbidden")
        event = {"subject": "x", "start": _at(9), "end": _at(10)}
        graph_error(client.post(f"/users/{anna}/events", json=event), 403, "ErrorAccessDenied")
    sim.set_roles(client_id, ["Presence.ReadWrite.All"])
    # A new MSAL app has no cache: its token carries the roles granted now.
    with graph(handle, get_token(client_id)) as client:
        graph_error(client.get(f"/users/{anna}"), 403, "Authorization_RequestDenied")
        assert set_presence(client, anna, client_id, "Busy/InACall").status_code == 200


# -- users -----------------------------------------------------------------------


def test_users_by_id_upn_and_mail_filter(api: httpx.Client, anna: str, ben: str) -> None:
    by_id = api.get(f"/users/{ben}", params={"$select": "id,mail"}).json()
    assert {k: v for k, v in by_id.items() if not k.startswith("@")} == {
        "id": ben,
        "mail": BEN_MAIL,
    }
    assert api.get(f"/users/{BEN_UPN.upper()}").json()["id"] == ben
    # Ben's mail is not his UPN: a lookup by mail needs $filter.
    graph_error(api.get(f"/users/{BEN_MAIL}"), 404, "Request_ResourceNotFound")
    found = api.get("/users", params={"$filter": f"mail eq '{BEN_MAIL}'", "$select": "id"})
    assert found.json()["value"] == [{"id": ben}]
    none = api.get("/users", params={"$filter": "mail eq 'nobody@contoso.example'"})
    assert none.json()["value"] == []
    graph_error(api.get("/users", params={"$filter": "mobilePhone eq '1'"}), 400)
    graph_error(api.get(f"/users/{anna}", params={"$select": "shoeSize"}), 400)


# -- presence ------------------------------------------------------------------


def test_set_presence_shows_and_clear_presence_goes_offline(
    api: httpx.Client, anna: str, client_id: str
) -> None:
    assert shown(api, anna) == "Offline/Offline"
    response = set_presence(api, anna, client_id, "Busy/InACall")
    assert response.status_code == 200
    assert response.content == b""
    assert shown(api, anna) == "Busy/InACall"
    cleared = api.post(f"/users/{anna}/presence/clearPresence", json={"sessionId": client_id})
    assert cleared.status_code == 200
    assert shown(api, anna) == "Offline/Offline"
    again = api.post(f"/users/{anna}/presence/clearPresence", json={"sessionId": client_id})
    graph_error(again, 404)


def test_the_users_own_status_wins(
    sim: GraphSim, api: httpx.Client, anna: str, client_id: str
) -> None:
    sim.sign_in_client(anna, "Available")
    sim.set_preferred(anna, "DoNotDisturb", "DoNotDisturb")
    set_presence(api, anna, client_id, "Busy/InACall")
    assert shown(api, anna) == "DoNotDisturb/DoNotDisturb"
    sim.clear_preferred(anna)
    assert shown(api, anna) == "Busy/InACall"


def test_preferred_status_needs_a_session(sim: GraphSim, api: httpx.Client, anna: str) -> None:
    sim.set_preferred(anna, "Busy", "Busy")
    assert shown(api, anna) == "Offline/Offline"
    sim.sign_in_client(anna, "Available")
    assert shown(api, anna) == "Busy/Busy"


@pytest.mark.parametrize(
    ("client", "app", "expected"),
    [
        ("Available", "Away/Away", "Available/Available"),
        ("Available", "Busy/InACall", "Busy/InACall"),
        ("Busy", "Available/Available", "Busy/Busy"),
        ("Busy", "DoNotDisturb/Presenting", "DoNotDisturb/Presenting"),
        ("Away", "Available/Available", "Available/Available"),
    ],
)
def test_sessions_combine_by_rank(
    sim: GraphSim,
    api: httpx.Client,
    anna: str,
    client_id: str,
    client: str,
    app: str,
    expected: str,
) -> None:
    sim.sign_in_client(anna, client)
    assert set_presence(api, anna, client_id, app).status_code == 200
    assert shown(api, anna) == expected


def test_sessions_expire_and_available_fades(
    clock: SimClock, sim: GraphSim, api: httpx.Client, anna: str, client_id: str
) -> None:
    set_presence(api, anna, client_id, "Busy/InACall", "PT5M")
    clock.advance(299)
    assert shown(api, anna) == "Busy/InACall"
    clock.advance(1)
    assert shown(api, anna) == "Offline/Offline"
    assert sim.sessions(anna) == {}

    set_presence(api, anna, client_id, "Available/Available", "PT1H")
    clock.advance(5 * 60)
    assert shown(api, anna) == "Available/AvailableInactive"
    clock.advance(5 * 60)
    assert shown(api, anna) == "Away/Away"
    set_presence(api, anna, client_id, "Available/Available", "PT1H")
    assert shown(api, anna) == "Available/Available"


def test_default_expiration_is_five_minutes(
    clock: SimClock, api: httpx.Client, anna: str, client_id: str
) -> None:
    set_presence(api, anna, client_id, "Busy/InACall", duration=None)
    clock.advance(5 * 60)
    assert shown(api, anna) == "Offline/Offline"


@pytest.mark.parametrize(
    "pair", ["Busy/Busy", "DoNotDisturb/DoNotDisturb", "Busy/InAMeeting", "Offline/OffWork"]
)
def test_pairs_setpresence_does_not_take_are_400(
    api: httpx.Client, anna: str, client_id: str, pair: str
) -> None:
    graph_error(set_presence(api, anna, client_id, pair), 400, "BadRequest")
    assert shown(api, anna) == "Offline/Offline"


@pytest.mark.parametrize(
    ("duration", "ok"),
    [("PT4M59S", False), ("PT5M", True), ("PT4H", True), ("PT4H1M", False), ("1h", False)],
)
def test_expiration_must_be_between_5_minutes_and_4_hours(
    api: httpx.Client, anna: str, client_id: str, duration: str, ok: bool
) -> None:
    response = set_presence(api, anna, client_id, "Busy/InACall", duration)
    if ok:
        assert response.status_code == 200
    else:
        graph_error(response, 400, "BadRequest")


def test_session_id_must_be_the_apps_client_id(
    api: httpx.Client, anna: str, client_id: str
) -> None:
    response = set_presence(api, anna, "22553876-f5ab-4529-bffb-cfe50aa89f87", "Busy/InACall")
    assert "client" in graph_error(response, 400, "BadRequest")
    other = api.post(f"/users/{anna}/presence/clearPresence", json={"sessionId": "someone"})
    graph_error(other, 400)


def test_presence_needs_an_object_id_and_a_known_user(api: httpx.Client, client_id: str) -> None:
    graph_error(set_presence(api, ANNA_UPN, client_id, "Busy/InACall"), 400)
    unknown = "0b9e6bd4-6fd0-4d6f-9b5e-123456789abc"
    graph_error(set_presence(api, unknown, client_id, "Busy/InACall"), 404)


def test_status_message_expiry_is_hidden_from_apps(
    clock: SimClock, sim: GraphSim, api: httpx.Client, anna: str
) -> None:
    expiry = (clock.now() + timedelta(minutes=30)).astimezone(UTC).replace(tzinfo=None)
    body = {
        "statusMessage": {
            "message": {"content": "On a call", "contentType": "text"},
            "expiryDateTime": {"dateTime": expiry.isoformat(), "timeZone": "UTC"},
        }
    }
    assert api.post(f"/users/{anna}/presence/setStatusMessage", json=body).status_code == 200
    seen = api.get(f"/users/{anna}/presence").json()["statusMessage"]
    assert seen == {"message": {"content": "On a call", "contentType": "text"}}
    assert sim.presence(anna)["statusMessage"]["expiryDateTime"]["timeZone"] == "UTC"
    clock.advance(30 * 60)
    assert api.get(f"/users/{anna}/presence").json()["statusMessage"] is None


def test_status_message_set_by_the_user_is_readable(
    sim: GraphSim, api: httpx.Client, anna: str
) -> None:
    sim.set_status_message(anna, "Back at 3")
    message = api.get(f"/users/{anna}/presence").json()["statusMessage"]
    assert message["message"]["content"] == "Back at 3"


def test_status_message_rejects_an_offset_in_datetime(api: httpx.Client, anna: str) -> None:
    body = {
        "statusMessage": {
            "message": {"content": "x", "contentType": "text"},
            "expiryDateTime": {"dateTime": "2026-10-18T17:05:33+02:00", "timeZone": "UTC"},
        }
    }
    graph_error(api.post(f"/users/{anna}/presence/setStatusMessage", json=body), 400)


# -- events --------------------------------------------------------------------


def _at(hour: int) -> dict[str, str]:
    return {"dateTime": f"2026-12-02T{hour:02d}:00:00", "timeZone": "UTC"}


def test_events_with_the_same_transaction_id_make_one(
    sim: GraphSim, api: httpx.Client, anna: str
) -> None:
    body = {"subject": "On a call", "showAs": "busy", "start": _at(9), "end": _at(10),
            "isReminderOn": False, "transactionId": "call-42"}  # fmt: skip
    first = api.post(f"/users/{anna}/events", json=body)
    second = api.post(f"/users/{anna}/calendar/events", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert len(sim.events(anna)) == 1
    other = api.post(f"/users/{anna}/events", json={**body, "transactionId": "call-43"})
    assert other.json()["id"] != first.json()["id"]
    assert len(api.get(f"/users/{anna}/events").json()["value"]) == 2


def test_event_patch_get_delete(api: httpx.Client, anna: str) -> None:
    body = {"subject": "On a call", "start": _at(9), "end": _at(10), "transactionId": "t1"}
    event_id = api.post(f"/users/{anna}/events", json=body).json()["id"]
    patched = api.patch(f"/users/{anna}/events/{event_id}", json={"end": _at(11)})
    assert patched.status_code == 200
    assert (
        api.get(f"/users/{anna}/events/{event_id}")
        .json()["end"]["dateTime"]
        .startswith("2026-12-02T11:00:00")
    )
    graph_error(api.patch(f"/users/{anna}/events/{event_id}", json={"transactionId": "t2"}), 400)
    graph_error(api.patch(f"/users/{anna}/events/{event_id}", json={"end": _at(8)}), 400)
    assert api.delete(f"/users/{anna}/events/{event_id}").status_code == 204
    graph_error(api.get(f"/users/{anna}/events/{event_id}"), 404, "ErrorItemNotFound")
    graph_error(api.delete(f"/users/{anna}/events/{event_id}"), 404)


def test_a_timed_out_create_retried_makes_one_event(
    sim: GraphSim, handle: GraphHandle, client_id: str, anna: str, get_token: GetToken
) -> None:
    body = {"subject": "On a call", "start": _at(9), "end": _at(10), "transactionId": "retry-1"}
    sim.hang_next(1.0, path=f"/v1.0/users/{anna}/events")
    with graph(handle, get_token(client_id), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"/users/{anna}/events", json=body)
        assert client.post(f"/users/{anna}/events", json=body).status_code == 201
    eventually(lambda: len(sim.requests(f"/v1.0/users/{anna}/events")) == 2, "the hung POST")
    assert len(sim.events(anna)) == 1


# -- throttling ----------------------------------------------------------------


def test_injected_429_and_503_carry_retry_after(
    sim: GraphSim, api: httpx.Client, anna: str, client_id: str
) -> None:
    sim.fail_next(f"/v1.0/users/{anna}/presence", status=429, count=2, retry_after=7)
    for _ in range(2):
        response = set_presence(api, anna, client_id, "Busy/InACall")
        graph_error(response, 429, "TooManyRequests")
        assert response.headers["Retry-After"] == "7"
    assert set_presence(api, anna, client_id, "Busy/InACall").status_code == 200
    sim.fail_next("/v1.0/users", status=503, retry_after=None)
    response = api.get(f"/users/{anna}")
    graph_error(response, 503, "ServiceUnavailable")
    assert "Retry-After" not in response.headers


def test_presence_budget_is_1500_per_30_seconds_per_app(
    clock: SimClock, sim: GraphSim, handle: GraphHandle, api: httpx.Client, anna: str,
    client_id: str, get_token: GetToken) -> None:  # fmt: skip
    for n in range(1500):
        # Reads and writes share the one budget.
        if n % 2:
            assert set_presence(api, anna, client_id, "Busy/InACall").status_code == 200
        else:
            assert api.get(f"/users/{anna}/presence").status_code == 200
    refused = api.get(f"/users/{anna}/presence")
    graph_error(refused, 429, "TooManyRequests")
    assert refused.headers["Retry-After"] == "30"
    # Other apps and other endpoints are not affected.
    assert api.get(f"/users/{anna}").status_code == 200
    other = sim.register_app(secret=SECRET)
    with graph(handle, get_token(other)) as client:
        assert client.get(f"/users/{anna}/presence").status_code == 200
    clock.advance(29)
    graph_error(api.get(f"/users/{anna}/presence"), 429)
    clock.advance(1)
    assert api.get(f"/users/{anna}/presence").status_code == 200


def test_token_endpoint_failures_are_entra_shaped(
    sim: GraphSim, handle: GraphHandle, client_id: str, make_app: MakeApp
) -> None:
    token_path = f"/{sim.tenant}/oauth2/v2.0/token"
    sim.fail_next(token_path, status=503, retry_after=3)
    # MSAL raises on a 5xx from the token endpoint rather than returning an error.
    with pytest.raises(msal.exceptions.MsalServiceError, match="503"):
        make_app(client_id, SECRET).acquire_token_for_client([handle.scope])
    sim.fail_next(token_path, status=429, retry_after=3)
    with httpx.Client(verify=_trust(handle)) as client:
        response = client.post(
            handle.origin + token_path,
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": SECRET, "scope": handle.scope},
        )  # fmt: skip
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error_description"].startswith("AADSTS")
    assert [r.status for r in sim.requests(token_path)] == [503, 429]


def test_presences_by_user_id_reads_many_and_skips_unknown_ids(
    sim: GraphSim, api: httpx.Client, anna: str, ben: str, client_id: str
) -> None:
    set_presence(api, anna, client_id, "Busy/InACall")
    unknown = "0b9e6bd4-6fd0-4d6f-9b5e-123456789abc"
    response = api.post("/communications/getPresencesByUserId", json={"ids": [anna, ben, unknown]})
    assert response.status_code == 200
    seen = {p["id"]: f"{p['availability']}/{p['activity']}" for p in response.json()["value"]}
    assert seen == {anna: "Busy/InACall", ben: "Offline/Offline"}
    graph_error(api.post("/communications/getPresencesByUserId", json={"ids": [ANNA_UPN]}), 400)
    too_many = {"ids": [anna] * 651}
    graph_error(api.post("/communications/getPresencesByUserId", json=too_many), 400)


async def test_served_on_the_running_loop_with_an_async_client(sim: GraphSim) -> None:
    client_id = sim.register_app(secret=SECRET)
    anna = sim.add_user(ANNA_UPN)
    async with serve(sim) as running, httpx.AsyncClient(verify=_trust(running)) as client:
        token = await client.post(
            f"{running.authority()}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": SECRET, "scope": running.scope},
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = {"sessionId": client_id, "availability": "Busy", "activity": "InACall"}
        url = f"{running.graph_url}/v1.0/users/{anna}/presence"
        assert (await client.post(f"{url}/setPresence", json=body, headers=headers)).is_success
        assert (await client.get(url, headers=headers)).json()["activity"] == "InACall"


# -- control API -----------------------------------------------------------------


def test_http_control_api(handle: GraphHandle, sim: GraphSim, api: httpx.Client) -> None:
    with httpx.Client(
        base_url=f"{handle.origin}/_sim",
        verify=_trust(handle),
    ) as control:
        created = control.post("/users", json={"userPrincipalName": "cara@contoso.example"})
        cara = created.json()["id"]
        assert control.post(f"/users/{cara}/client", json={"availability": "Available"}).is_success
        preferred = {"availability": "Away", "activity": "Away"}
        assert control.post(f"/users/{cara}/preferred", json=preferred).is_success
        assert control.post(f"/users/{cara}/status-message", json={"content": "Lunch"}).is_success
        assert shown(api, cara) == "Away/Away"
        state = control.get(f"/users/{cara}/presence").json()
        assert state["statusMessage"]["message"]["content"] == "Lunch"
        assert "teams-client" in state["sessions"]
        log = control.get("/requests", params={"path": "/v1.0/"}).json()
        assert [(r["method"], r["status"]) for r in log] == [("GET", 200)]
        bad = control.post(f"/users/{cara}/preferred", json={"availability": "Busy"})
        assert bad.status_code == 400
        before = sim.now()
        assert control.post("/clock/advance", json={"seconds": 60}).is_success
        assert sim.now() - before == timedelta(seconds=60)


# -- command line ------------------------------------------------------------------


def test_sim_microsoft_command_prints_a_working_config(tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "presence_sync", "sim", "microsoft", "--port", "0",
               "--tls-dir", str(tmp_path)]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            _check_printed_config(proc, tmp_path)
        finally:
            if proc.poll() is None:
                proc.kill()


def _check_printed_config(proc: subprocess.Popen[str], tmp_path: Any) -> None:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  ca_bundle:"):
            break
    output = "".join(lines)
    assert "microsoft:\n" in output
    config = dict(
        line.strip().split(": ", 1) for line in output.splitlines() if line.startswith("  ")
    )
    assert (tmp_path / "graph-sim-ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    session = requests.Session()
    session.trust_env = False
    session.verify = config["ca_bundle"]
    app = msal.ConfidentialClientApplication(
        config["client_id"],
        client_credential=config["client_secret"],
        authority=f"{config['authority']}/{config['tenant_id']}",
        instance_discovery=False,
        http_client=session,
    )
    assert "access_token" in app.acquire_token_for_client(["https://graph.microsoft.com/.default"])
    session.close()  # no keep-alive connection for the server to wait out
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def _sim_microsoft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "presence_sync", "sim", "microsoft", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("args", [["--port", "x"], ["--port", "70000"], ["--users", "-1"]])
def test_sim_microsoft_bad_arguments_print_usage(args: list[str]) -> None:
    done = _sim_microsoft(*args)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert "Traceback" not in done.stderr


def test_sim_microsoft_on_a_busy_port_is_a_usage_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _sim_microsoft("--port", str(port))
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert f"error: port {port} is in use" in done.stderr
    assert "Traceback" not in done.stderr
