"""``presence-sync status`` and ``presence-sync resync``.

``status`` prints what the status page shows, from the running daemon's API
(``/api/status``, every page of it; ``PERSON`` shows one person in detail).
When the daemon does not answer it prints the stored view instead: what
each target last confirmed, read from the state database opened read-only,
and says so. Exit codes: 0 shown from the daemon; 1 the daemon is down
(the stored view is printed anyway), or PERSON is unknown.

``resync`` asks the daemon for a full resync from NFON's snapshot now.

Names come from NFON's directory and are untrusted: control characters are
shown escaped, so a name cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TextIO

from presence_sync.config.secrets import UNREAD_SECRET
from presence_sync.model import Person, describe
from presence_sync.ops.logging import printable
from presence_sync.store import AppliedRow, PauseRow, read_stored
from presence_sync.tools.client import ApiError, Client, DaemonDown, Located, locate

__all__ = ["resync", "status"]

PAGE: Final = 1000

STATES: Final = {
    "in-sync": "in sync",
    "queued": "queued",
    "starting": "starting",
    "in-flight": "in flight",
    "backoff": "backing off",
    "parked": "parked",
    "waiting": "waiting for NFON",
    "paused": "paused",
}


def clean(value: object) -> str:
    """``value`` as text safe for a terminal: control characters escaped."""
    return "" if value is None else printable(str(value))


def when(value: str | None, today: str = "") -> str:
    """An API time stamp for people, in the one format every screen uses
    (the readiness reasons' too): the clock time with its zone offset,
    ``13:04:05+01:00``, after the date (``2026-12-01 13:04:05+01:00``) unless
    it is on ``today`` (``YYYY-MM-DD``)."""
    if not value:
        return ""
    date, _, rest = value.partition("T")
    if rest.endswith("Z"):
        rest = rest[:-1] + "+00:00"
    return rest if date == today else f"{date} {rest}"


def day(value: str | None) -> str:
    """The date of an API time stamp (``at``): what ``when`` leaves out."""
    return (value or "")[:10]


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows in columns, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


# --- status ----------------------------------------------------------------------------


def status(
    config: str | os.PathLike[str],
    url: str | None,
    who: str | None,
    *,
    not_in_sync: bool = False,
    out: TextIO,
    err: TextIO,
) -> int:
    """``presence-sync status``; returns the exit code."""
    located = locate(config, url)
    try:
        with Client(located) as client:
            if who:
                try:
                    person = client.get(f"/api/people/{urllib.parse.quote(who, safe='')}")
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    print(f"presence-sync: {exc}", file=err)
                    return 1
                doc = client.get("/api/status", {"limit": 1})
                _daemon(doc, located, out)
                _person(person, day(doc["at"]), out)
                return 0
            pages = _all_pages(client, "not-in-sync" if not_in_sync else "all")
    except DaemonDown as exc:
        print(f"presence-sync: {exc}", file=err)
        return _stored(located, who, out)
    _daemon(pages[0], located, out)
    people = [p for page in pages for p in page["people"]]
    print(file=out)
    if not people:
        print("Nobody is out of sync." if not_in_sync else "No people configured.", file=out)
        return 0
    _people(people, list(pages[0]["daemon"]["targets"]), day(pages[0]["at"]), out)
    total, matched = pages[0]["total"], pages[0]["matched"]
    print(file=out)
    print(
        f"{matched} of {total} people shown." if matched != total else f"{total} people.", file=out
    )
    return 0


def _all_pages(client: Client, filter_: str) -> list[dict[str, Any]]:
    pages = [client.get("/api/status", {"filter": filter_, "limit": PAGE})]
    while (pages[-1]["offset"] + len(pages[-1]["people"])) < pages[-1]["matched"] and pages[-1][
        "people"
    ]:
        offset = pages[-1]["offset"] + len(pages[-1]["people"])
        pages.append(
            client.get("/api/status", {"filter": filter_, "offset": offset, "limit": PAGE})
        )
    return pages


def _daemon(doc: Mapping[str, Any], located: Located, out: TextIO) -> None:
    daemon = doc["daemon"]
    today = day(doc["at"])
    print(f"presence-sync at {located.url}: {clean(daemon['status'])}", file=out)
    names = {"nfon_stream": "NFON stream", "nfon_login": "NFON login"}
    for name, component in daemon["components"].items():
        if name in names:
            print(f"  {names[name]}: {clean(component['reason'])}", file=out)
    print(f"  Last full resync: {when(daemon['last_resync'], today) or 'not yet'}", file=out)
    for name, t in daemon["targets"].items():
        state = t["state"]
        if t["until"]:
            state += f" until {when(t['until'], today)}"
        if t["reason"]:
            state += f" ({clean(t['reason'])})"
        # The kind only where the name does not say it already.
        kind = "" if t["kind"] == name else f" ({clean(t['kind'])})"
        print(
            f"  Target {clean(name)}{kind}: {state}; {t['queued']} queued, "
            f"{t['in_flight']} in flight, {t['backoff']} backing off, {t['parked']} parked",
            file=out,
        )


def _key_state(k: Mapping[str, Any], today: str) -> str:
    text = STATES.get(k["state"], str(k["state"]))
    if k["since"]:
        text += f" since {when(k['since'], today)}"
    if k["retry_at"]:
        text += f", next try {when(k['retry_at'], today)}"
    return text


def _shows(k: Mapping[str, Any]) -> str:
    applied = k["applied"] or "(their own)"
    desired = k["desired"] or "(their own)"
    return clean(applied if applied == desired else f"{applied} → wants {desired}")


def _people(
    people: Iterable[Mapping[str, Any]], targets: list[str], today: str, out: TextIO
) -> None:
    rows = [["NAME", "E-MAIL", "EXT", "LINE", "PRESENCE", "CALL", "TARGET", "STATE", "SHOWS"]]
    for p in people:
        first = [
            clean(p["name"] or "-"),
            clean(p["email"]),
            clean(p["extension"]),
            p["line"] or "unknown",
            p["presence"] or "unknown",
            p["direction"] or "-",
        ]
        for i, name in enumerate(targets):
            k = p["targets"].get(name)
            if k is None:
                continue
            lead = first if i == 0 else [""] * len(first)
            rows.append([*lead, clean(name), _key_state(k, today), _shows(k)])
    table(rows, out)


def _person(p: Mapping[str, Any], today: str, out: TextIO) -> None:
    print(file=out)
    name = clean(p["name"] or "(no name)")
    print(f"{name} <{clean(p['email'])}>, extension {clean(p['extension'])}", file=out)
    call = f", {p['direction']} call" if p["direction"] else ""
    print(
        f"  Line: {p['line'] or 'unknown'}, presence {p['presence'] or 'unknown'}{call}", file=out
    )
    if p["paused"]:
        pause = p["paused"]
        until = f" until {when(pause['until'], today)}" if pause["until"] else " until resumed"
        only = f" for {', '.join(pause['targets'])}" if pause["targets"] else ""
        print(f"  Paused{only}{until}", file=out)
    for name, k in p["targets"].items():
        print(f"  {clean(name)}: {_key_state(k, today)}", file=out)
        print(f"    wants: {clean(k['desired'] or '(their own status)')}", file=out)
        print(f"    shows: {clean(k['applied'] or '(their own status)')}", file=out)
        if k["rule"]:
            print(f"    rule:  {clean(k['rule'])}", file=out)
        if k["reason"]:
            print(f"    why:   {clean(k['reason'])}", file=out)


# --- the stored view ---------------------------------------------------------------------


def _read_stored(
    located: Located,
) -> tuple[str, tuple[list[AppliedRow], list[PauseRow]] | None]:
    """Where the stored view was read, and what it holds (applied rows and
    pauses); ``None`` for a PostgreSQL database without presence-sync
    tables yet. A PostgreSQL store is read read-only (nothing is created or
    migrated) with libpq's own password lookup (``PGPASSFILE``): its
    ``state.password_file`` is a systemd credential, not read here."""
    settings = located.settings
    state = settings.state
    if state.url is None:
        assert state.path is not None  # the config gives one of the two
        return str(state.path), read_stored(state.path)
    from presence_sync.store import postgres

    secret = None if state.password is None else state.password.get_secret_value()
    password = None if secret == UNREAD_SECRET else secret
    found = postgres.read_stored(state.url, customer=settings.nfon.customer, password=password)
    return postgres.describe(state.url), found


def _stored(located: Located, who: str | None, out: TextIO) -> int:
    where, found = _read_stored(located)
    print(f"Stored view (the daemon is down), read from {where}:", file=out)
    if found is None:
        print(
            "Nothing stored yet: the database has no presence-sync tables "
            "(the daemon creates them when it starts).",
            file=out,
        )
        return 1
    rows, pauses = found
    today = datetime.now().astimezone().date().isoformat()
    print("what each target last confirmed; nothing newer is known here.", file=out)
    print(file=out)
    if who:
        wanted = who.strip().casefold()
        rows = [
            r
            for r in rows
            if wanted in (r.person.key, r.person.email.casefold())
            or r.person.extension == who.strip()
        ]
        pauses = [p for p in pauses if p.person_key == wanted]
        if not rows and not pauses:
            print(f"Nothing stored for {clean(who)}.", file=out)
            return 1
    if not rows:
        print("Nothing stored: no target shows anything of ours.", file=out)
    else:
        _stored_table(rows, today, out)
    for pause in pauses:
        only = f" for {', '.join(sorted(pause.targets))}" if pause.targets is not None else ""
        until = (
            " until resumed"
            if pause.until is None
            else f" until {when(_local(pause.until), today)}"
        )
        print(f"Paused: {clean(pause.person_key)}{only}{until}.", file=out)
    return 1


def _local(at: datetime) -> str:
    return at.astimezone().isoformat(timespec="seconds")


def _stored_table(rows: Sequence[AppliedRow], today: str, out: TextIO) -> None:
    people: dict[str, Person] = {}
    for row in rows:
        people.setdefault(row.person.key, row.person)
    lines = [["NAME", "E-MAIL", "EXT", "TARGET", "SHOWS", "SINCE"]]
    for row in sorted(rows, key=lambda r: (r.person.key, r.target)):
        p = row.person
        applied = row.applied
        shows = "(their own)" if applied.status is None else describe(applied.status)
        lines.append(
            [
                clean(p.name or "-"),
                clean(p.email),
                clean(p.extension),
                clean(row.target),
                clean(shows),
                when(_local(applied.at), today),
            ]
        )
    table(lines, out)
    print(file=out)
    counts = f"{_count(len(people), 'person', 'people')}, {_count(len(rows), 'stored row')}"
    print(f"{counts}.", file=out)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


# --- resync ------------------------------------------------------------------------------


def resync(config: str | os.PathLike[str], url: str | None, *, out: TextIO) -> int:
    """``presence-sync resync``; returns the exit code."""
    located = locate(config, url)
    with Client(located, located.token()) as client:
        client.post("/api/resync")
    print(
        f"Full resync started at {located.url}: the daemon reads every line from NFON "
        "again and corrects what differs.",
        file=out,
    )
    return 0
