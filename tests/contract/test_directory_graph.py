"""``members.GroupMembers`` against the Graph simulator over TLS with the
real msal and httpx: finding the group, paging, nested groups, disabled
accounts, and what Graph's refusals become."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from presence_sync.clock import ManualClock
from presence_sync.config import MicrosoftSettings
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.members import GroupMembers
from presence_sync.sim.graph import GraphHandle, GraphSim, serve
from presence_sync.sim.graph_sim import DIRECTORY_ROLES

SECRET = "graph-directory-secret"


@dataclass
class World:
    sim: GraphSim
    handle: GraphHandle
    client_id: str
    group: str

    def members(
        self, group: str | None = None, graph_url: str | None = None, **kw: Any
    ) -> GroupMembers:
        microsoft = MicrosoftSettings(
            tenant_id=self.sim.tenant,
            client_id=self.client_id,
            client_secret=SECRET,
            authority=self.handle.origin,
            graph_url=graph_url or self.handle.origin,
        )
        return GroupMembers(
            microsoft,
            group=group or "Phone users",
            extension_from=kw.pop("extension_from", "businessPhones"),
            clock=ManualClock(),
            user_agent="presence-sync/t",
            verify=str(self.handle.ca_path),
            **kw,
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sim = GraphSim()
    client_id = sim.register_app(secret=SECRET, roles=DIRECTORY_ROLES)
    group = sim.add_group("Phone users")
    sim.add_group("Other")
    async with serve(sim) as handle:
        yield World(sim, handle, client_id, group)


def _user(sim: GraphSim, name: str, phone: str, **changes: Any) -> str:
    user = sim.add_user(f"{name}@example.com", display_name=name.title())
    sim.change_user(user, businessPhones=[phone], **changes)
    return user


async def test_three_pages_are_followed_and_every_member_read(world: World) -> None:
    for i in range(5):
        world.sim.add_member(world.group, _user(world.sim, f"p{i}", f"+49 89 45300 {100 + i}"))
    reader = world.members(page_size=2)
    try:
        members = await reader.load()
    finally:
        await reader.aclose()
    assert sorted(m.email for m in members) == [f"p{i}@example.com" for i in range(5)]
    assert {m.values for m in members} == {(f"+49 89 45300 {100 + i}",) for i in range(5)}
    pages = world.sim.requests(f"/v1.0/groups/{world.group}/transitiveMembers/microsoft.graph.user")
    assert len(pages) == 3
    assert all(r.status == 200 for r in pages)
    first = dict(p.split("=", 1) for p in pages[0].query.split("&"))
    assert first["%24top"] == "2"
    assert "onPremisesExtensionAttributes" not in first["%24select"]
    assert "%24skiptoken" in pages[1].query
    # The group was found by its name once.
    [lookup] = [r for r in world.sim.requests("/v1.0/groups") if r.path == "/v1.0/groups"]
    assert "displayName" in lookup.query
    assert reader.requests == 4


async def test_nested_groups_count_and_disabled_accounts_are_skipped(world: World) -> None:
    sim = world.sim
    anna = _user(sim, "anna", "100")
    ben = _user(sim, "ben", "101")
    gone = _user(sim, "gone", "102", accountEnabled=False)
    inner = sim.add_group("Sales phones")
    deeper = sim.add_group("Sales Munich")
    sim.add_member(world.group, anna)
    sim.add_member(world.group, inner)
    sim.add_member(inner, deeper)
    sim.add_member(deeper, ben)
    sim.add_member(deeper, anna)  # reached twice, listed once
    sim.add_member(inner, gone)
    reader = world.members()
    try:
        members = await reader.load()
    finally:
        await reader.aclose()
    assert sorted(m.email for m in members) == ["anna@example.com", "ben@example.com"]


async def test_extension_attributes_are_read_from_on_premises_attributes(world: World) -> None:
    anna = _user(world.sim, "anna", "+49 1", extensionAttribute3="100")
    world.sim.add_member(world.group, anna)
    reader = world.members(extension_from="extensionAttribute3")
    try:
        [member] = await reader.load()
    finally:
        await reader.aclose()
    assert member.values == ("100",)


async def test_the_group_may_be_given_by_object_id(world: World) -> None:
    world.sim.add_member(world.group, _user(world.sim, "anna", "100"))
    reader = world.members(group=world.group.upper())
    try:
        [member] = await reader.load()
    finally:
        await reader.aclose()
    assert member.email == "anna@example.com"
    assert not [r for r in world.sim.requests("/v1.0/groups") if r.path == "/v1.0/groups"]


@pytest.mark.parametrize("name", ["Nobody's group", "Twins"])
async def test_a_missing_or_ambiguous_name_says_what_to_write(world: World, name: str) -> None:
    if name == "Twins":
        world.sim.add_group("Twins")
        world.sim.add_group("twins")
    reader = world.members(group=name)
    try:
        with pytest.raises(PermanentError) as caught:
            await reader.load()
    finally:
        await reader.aclose()
    assert "object id" in str(caught.value)


async def test_without_group_member_read_all_the_permission_is_named(world: World) -> None:
    world.sim.set_roles(world.client_id, {"User.Read.All"})
    reader = world.members()
    try:
        with pytest.raises(AuthError) as caught:
            await reader.load()
    finally:
        await reader.aclose()
    assert "GroupMember.Read.All" in str(caught.value)


async def test_a_server_error_is_transient(world: World) -> None:
    world.sim.fail_next("/v1.0/groups/", status=500, retry_after=None)
    reader = world.members(group=world.group)
    try:
        with pytest.raises(TransientError):
            await reader.load()
    finally:
        await reader.aclose()


async def test_the_simulator_refuses_a_page_larger_than_graphs(world: World) -> None:
    reader = world.members(page_size=1000)
    try:
        with pytest.raises(PermanentError) as caught:
            await reader.load()
    finally:
        await reader.aclose()
    assert "page size" in str(caught.value)


@contextlib.contextmanager
def _answering(content_type: str, body: bytes) -> Iterator[str]:
    """A loopback server answering every GET 200 with ``body``: what a
    proxy's login page looks like where Graph was meant."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/html", b"<html><body>Please sign in to the proxy</body></html>", "no JSON"),
        ("application/json", b'["not", "an", "object"]', "no object"),
    ],
)
@pytest.mark.parametrize("by", ["name", "id"])
async def test_a_200_that_is_no_json_object_is_a_transient_error_saying_so(
    world: World, content_type: str, body: bytes, reason: str, by: str
) -> None:
    with _answering(content_type, body) as origin:
        world.sim.accept_resource(origin)
        reader = world.members(group=world.group if by == "id" else "Phone users", graph_url=origin)
        try:
            with pytest.raises(TransientError) as caught:
                await reader.load()
        finally:
            await reader.aclose()
    assert reason in str(caught.value)
    assert caught.value.status == 200
