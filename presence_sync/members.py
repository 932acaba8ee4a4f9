"""The members of an Entra group, read from Microsoft Graph.

``GroupMembers.load`` finds the group (``GET /groups?$filter=displayName eq
'…'``, or the object id as given), then lists every user in it, nested
groups included (``GET /groups/{id}/transitiveMembers/microsoft.graph.user``
with ``$select`` and ``$top=999``, following ``@odata.nextLink``), and
returns the enabled ones as ``entra.Member`` values. Disabled accounts
(``accountEnabled`` false) are skipped: they cannot use a phone.

Application permissions: ``GroupMember.Read.All`` (the group and its
members) and ``User.Read.All`` (the users' phone numbers and attributes).
Errors are ``GraphClient``'s (``AuthError``, ``TransientError``,
``PermanentError``); a group that does not exist, or a name that several
groups have, is a ``PermanentError`` saying what to write instead.

A refresh with no change costs what a first load costs in requests (one
for the group name, one per 999 members: 11 for 10,000), and nothing
beyond: the directory compares the members it gets with the ones it has.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import httpx

from presence_sync.clock import Clock
from presence_sync.directory import Directory
from presence_sync.entra import Member
from presence_sync.errors import PermanentError, PresenceSyncError, TransientError
from presence_sync.model import Person
from presence_sync.ops.logging import kv
from presence_sync.sections import MicrosoftSettings
from presence_sync.targets.base import TargetEnv
from presence_sync.targets.graph import GraphClient

__all__ = ["PAGE_SIZE", "GroupMembers", "Refresher", "read_member"]

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 999
"""Graph's largest ``$top`` for a group's members."""

_ATTRIBUTE = re.compile(r"extensionAttribute(\d+)")
_BASE_PROPERTIES: Final = ("id", "mail", "userPrincipalName", "displayName", "accountEnabled")
_PERMISSION: Final = "GroupMember.Read.All and User.Read.All"


def _select(extension_from: str) -> str:
    if extension_from == "name":
        extra: tuple[str, ...] = ()
    elif _ATTRIBUTE.fullmatch(extension_from):
        extra = ("onPremisesExtensionAttributes",)
    else:
        extra = (extension_from,)
    return ",".join((*_BASE_PROPERTIES, *extra))


def read_member(user: Mapping[str, Any], extension_from: str) -> Member | None:
    """The ``Member`` of one user resource, or None when the account is
    disabled or has neither a mail address nor a UPN."""
    if user.get("accountEnabled") is False:
        return None
    email = user.get("mail") or user.get("userPrincipalName")
    if not isinstance(email, str) or not email.strip() or not isinstance(user.get("id"), str):
        return None
    name = str(user.get("displayName") or "")
    values: list[str] = []
    attribute = _ATTRIBUTE.fullmatch(extension_from)
    if extension_from == "name":
        raw: Any = name
    elif attribute is not None:
        raw = (user.get("onPremisesExtensionAttributes") or {}).get(extension_from)
    else:
        raw = user.get(extension_from)
    for value in raw if isinstance(raw, list) else [raw]:
        if isinstance(value, str) and value.strip():
            values.append(value.strip())
    return Member(id=str(user["id"]), email=email.strip(), display_name=name, values=tuple(values))


def _page(response: httpx.Response, what: str) -> Mapping[str, Any]:
    """The JSON object of a 200 from Graph; anything else (a proxy's HTML
    page, a list) is a ``TransientError`` saying so, not a traceback."""
    status = response.status_code
    kind = str(response.headers.get("content-type") or "no content type").split(";")[0]
    try:
        body = response.json()
    except ValueError:
        raise TransientError(
            f"directory: Graph answered {what} with {status} but no JSON ({kind[:60]!r}): "
            "a proxy in between?",
            status=status,
        ) from None
    if not isinstance(body, Mapping):
        raise TransientError(
            f"directory: Graph answered {what} with JSON that is no object ({type(body).__name__})",
            status=status,
        )
    return body


def _value(page: Mapping[str, Any]) -> list[Any]:
    """A page's ``value`` list (a missing or malformed one is empty)."""
    value = page.get("value")
    return value if isinstance(value, list) else []


class GroupMembers:
    """Reads one group's members with the app's own Graph credential
    (``microsoft:``), with its own HTTP client."""

    def __init__(
        self,
        microsoft: MicrosoftSettings,
        *,
        group: str,
        extension_from: str,
        clock: Clock,
        user_agent: str,
        verify: str | bool = True,
        timeout: float = 30.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        env = TargetEnv(
            clock=clock,
            user_agent=user_agent,
            sections=MappingProxyType({"microsoft": microsoft}),
            verify=verify,
        )
        self.group = group
        self.extension_from = extension_from
        self.page_size = page_size
        self.requests = 0
        """Graph requests made so far (for the benchmark and the log)."""
        self._graph = GraphClient("directory", env, timeout=timeout)
        self._group_id: str | None = None

    async def _group(self) -> str:
        try:
            return str(uuid.UUID(self.group))
        except ValueError:
            pass
        literal = self.group.replace("'", "''")
        self.requests += 1
        response = await self._graph.call(
            "GET",
            "/groups",
            params={"$filter": f"displayName eq '{literal}'", "$select": "id,displayName"},
            permission=_PERMISSION,
        )
        found = [g for g in _value(_page(response, "the group lookup")) if isinstance(g, Mapping)]
        if not found:
            raise PermanentError(
                f"directory: no group named {self.group!r} in tenant {self._graph.tenant} "
                "(directory.microsoft.group takes the display name or the object id)"
            )
        if len(found) > 1:
            ids = ", ".join(str(g.get("id")) for g in found)
            raise PermanentError(
                f"directory: {len(found)} groups are named {self.group!r} ({ids}); "
                "set directory.microsoft.group to the object id of the one meant"
            )
        return str(found[0]["id"])

    async def load(self) -> list[Member]:
        """Every enabled member, nested groups included, in Graph's order;
        one user reached through two nested groups is listed once."""
        if self._group_id is None:
            self._group_id = await self._group()
        path: str = f"/groups/{self._group_id}/transitiveMembers/microsoft.graph.user"
        params: Mapping[str, str] | None = {
            "$select": _select(self.extension_from),
            "$top": str(self.page_size),
        }
        members: dict[str, Member] = {}
        while True:
            self.requests += 1
            response = await self._graph.call("GET", path, params=params, permission=_PERMISSION)
            page = _page(response, "a page of the group's members")
            for user in _value(page):
                if isinstance(user, Mapping):
                    member = read_member(user, self.extension_from)
                    if member is not None:
                        members.setdefault(member.id, member)
            link = page.get("@odata.nextLink")
            if not isinstance(link, str):
                return list(members.values())
            path, params = self._next(link), None

    def _next(self, link: str) -> str:
        """The path (under ``/v1.0``) of ``@odata.nextLink``; a link to any
        other host is refused, so the token never leaves for it."""
        base = self._graph.base
        if not link.startswith(base + "/"):
            raise PermanentError(f"directory: Graph sent a next page outside {base}: refused")
        return link[len(base) :]

    async def aclose(self) -> None:
        await self._graph.aclose()


class Refresher:
    """Keeps ``directory``'s group members current: ``refresh`` loads them
    with ``source`` and hands the directory's people to ``apply`` (the
    engine's ``set_people``) when anything changed.

    A failed load raises (the schedule logs it once, and once when it works
    again) and changes nothing: the last good members stay. ``source`` is
    None without ``directory.microsoft``; a reload hands a new one to
    ``use``, which cancels a load still running with the old one (the old
    one is the caller's to close)."""

    def __init__(
        self,
        source: GroupMembers | None,
        directory: Directory,
        apply: Callable[[Sequence[Person]], None],
        clock: Clock,
    ) -> None:
        self.source = source
        self.directory = directory
        self.apply = apply
        self.clock = clock
        self.last_success: datetime | None = None
        self.error: str | None = None
        """Why the last refresh failed (None when it worked)."""
        self._loading: asyncio.Future[list[Member]] | None = None

    async def use(self, source: GroupMembers | None) -> None:
        """Read with ``source`` from now on. A load still running with the
        old reader (a scheduled refresh, say) is cancelled and awaited
        first: its answer is for the old group, and the caller closes the
        old reader next."""
        loading = self._loading
        if loading is not None and not loading.done():
            loading.cancel()
            await asyncio.wait({loading})
        self.source = source
        self.error = None

    async def refresh(self) -> None:
        source = self.source
        if source is None:
            return
        start = self.clock.monotonic()
        requests = source.requests
        loading = asyncio.ensure_future(source.load())
        self._loading = loading
        try:
            await asyncio.wait({loading})
        except asyncio.CancelledError:
            loading.cancel()
            raise
        if loading.cancelled():
            log.info("group members refresh cancelled: the reader was replaced")
            return
        try:
            members = loading.result()
        except PresenceSyncError as exc:
            self.error = str(exc)
            raise
        self.error = None
        self.last_success = self.clock.now()
        change = self.directory.update_members(members)
        if change:
            self.apply(self.directory.people())
        log.info(
            "group members refreshed",
            extra=kv(
                members=len(members),
                requests=source.requests - requests,
                added=len(change.added),
                removed=len(change.removed),
                changed=len(change.changed),
                held=self.directory.held is not None,
                seconds=round(self.clock.monotonic() - start, 3),
            ),
        )
