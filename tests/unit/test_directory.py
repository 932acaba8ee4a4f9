"""The directory: configured people joined with NFON's extension list."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from presence_sync.directory import Directory, DirectoryChange
from presence_sync.entra import ENTRA_ID, Member
from presence_sync.errors import ConfigError
from presence_sync.model import ExtensionInfo, Person


@dataclass
class Entry:
    """Shaped like ``config.PersonSettings``."""

    extension: str
    email: str
    name: str | None = None
    groups: list[str] = field(default_factory=list)
    ids: Mapping[str, str] = field(default_factory=dict)
    opt_out: list[str] = field(default_factory=list)


ANNA = Entry("100", "Anna@Example.com", groups=["support"], ids={"slack_status": "U1"})
BOB = Entry("101", "bob@example.com", name="Bob B.")
CARL = Entry("102", "carl@example.com", opt_out=["slack_status"])

NFON = [
    ExtensionInfo("100", "Anna Schmidt"),
    ExtensionInfo("101", "Robert Becker"),
    ExtensionInfo("102", ""),
    ExtensionInfo("200", "Reception"),
    ExtensionInfo("201", None),
]


def keys(people: Iterable[Person]) -> list[str]:
    return [p.key for p in people]


def gauge(mapping: str) -> float | None:
    return REGISTRY.get_sample_value("presence_sync_directory_extensions", {"mapping": mapping})


def test_before_nfon_data_everyone_configured_is_active() -> None:
    directory = Directory([ANNA, BOB])
    assert not directory.loaded
    assert keys(directory.people()) == ["anna@example.com", "bob@example.com"]
    anna = directory.person("100")
    assert anna is not None
    assert (anna.key, anna.email, anna.name) == ("anna@example.com", "Anna@Example.com", None)
    assert anna.groups == frozenset({"support"})
    assert dict(anna.ids) == {"slack_status": "U1"}
    assert directory.unmapped == frozenset()


def test_join_with_nfon_names() -> None:
    directory = Directory([ANNA, BOB, CARL])
    change = directory.update_extensions(NFON)
    assert directory.loaded
    anna, bob, carl = (directory.person(ext) for ext in ("100", "101", "102"))
    assert anna is not None
    assert bob is not None
    assert carl is not None
    assert anna.name == "Anna Schmidt"  # from NFON
    assert bob.name == "Bob B."  # the configured name wins
    assert carl.name is None  # NFON's empty name is no name
    assert carl.opt_out == frozenset({"slack_status"})
    assert change.changed == (anna,)
    assert change.added == change.removed == ()
    assert directory.unmapped == frozenset({"200", "201"})
    assert gauge("mapped") == 3
    assert gauge("unmapped") == 2


def test_person_whose_extension_disappears_becomes_inactive() -> None:
    directory = Directory([ANNA, BOB])
    directory.update_extensions(NFON)
    change = directory.update_extensions([i for i in NFON if i.extension != "101"])
    assert keys(change.removed) == ["bob@example.com"]
    assert change.added == change.changed == ()
    assert directory.person("101") is None
    assert keys(directory.people()) == ["anna@example.com"]
    assert gauge("mapped") == 1

    change = directory.update_extensions(NFON)
    assert keys(change.added) == ["bob@example.com"]
    assert directory.person("101") == change.added[0]


def test_an_empty_extension_list_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    directory = Directory([ANNA, BOB])
    directory.update_extensions(NFON)
    change = directory.update_extensions([])
    assert not change
    assert keys(directory.people()) == ["anna@example.com", "bob@example.com"]
    assert "NFON listed no extensions" in caplog.text


def test_an_empty_extension_list_keeps_group_members_without_typed_people(
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    change = directory.update_extensions([])
    assert not change
    assert keys(directory.people()) == ["dora@example.com", "emil@example.com"]
    assert "NFON listed no extensions" in caplog.text


def test_configured_extension_nfon_never_listed_is_inactive() -> None:
    directory = Directory([ANNA, Entry("999", "ghost@example.com")])
    change = directory.update_extensions(NFON)
    assert keys(change.removed) == ["ghost@example.com"]
    assert directory.person("999") is None


def test_same_data_again_changes_nothing() -> None:
    directory = Directory([ANNA, BOB])
    directory.update_extensions(NFON)
    change = directory.update_extensions(list(reversed(NFON)))
    assert not change


def test_nfon_rename_is_a_change() -> None:
    directory = Directory([ANNA])
    directory.update_extensions(NFON)
    renamed = [ExtensionInfo("100", "Anna Meier")]
    change = directory.update_extensions(renamed)
    assert [p.name for p in change.changed] == ["Anna Meier"]
    assert directory.unmapped == frozenset()
    assert gauge("unmapped") == 0


@pytest.mark.parametrize(
    ("new", "added", "removed", "changed"),
    [
        ([ANNA, BOB, CARL], ["carl@example.com"], [], []),
        ([ANNA], [], ["bob@example.com"], []),
        ([Entry("200", "anna@example.com"), BOB], [], [], ["anna@example.com"]),
        ([ANNA, Entry("101", "bob@example.com", name="Bobby")], [], [], ["bob@example.com"]),
        ([Entry("100", "anna@example.com", groups=["sales"]), BOB], [], [], ["anna@example.com"]),
        (
            [Entry("100", "anna@example.com", ids={"slack_status": "U9"}), BOB],
            [],
            [],
            ["anna@example.com"],
        ),
        (
            [ANNA, Entry("101", "bob@example.com", "Bob B.", opt_out=["log"])],
            [],
            [],
            ["bob@example.com"],
        ),
        # an extension NFON does not list: configured, but not active
        ([ANNA, BOB, Entry("777", "new@example.com")], [], [], []),
        ([BOB, ANNA], [], [], []),
    ],
    ids=["add", "remove", "move", "rename", "groups", "ids", "opt-out", "unlisted", "reorder"],
)
def test_replace_people_diff(
    new: list[Entry], added: list[str], removed: list[str], changed: list[str]
) -> None:
    directory = Directory([ANNA, BOB])
    directory.update_extensions(NFON)
    change = directory.replace_people(new)
    assert (keys(change.added), keys(change.removed), keys(change.changed)) == (
        added,
        removed,
        changed,
    )
    active = {p.key: p for p in directory.people()}
    for person in change.changed:
        assert active[person.key] is person


def test_replace_people_moves_unmapped() -> None:
    directory = Directory([ANNA])
    directory.update_extensions(NFON)
    assert "200" in directory.unmapped
    change = directory.replace_people([ANNA, Entry("200", "desk@example.com")])
    assert keys(change.added) == ["desk@example.com"]
    added = change.added[0]
    assert added.name == "Reception"
    assert directory.unmapped == frozenset({"101", "102", "201"})
    assert gauge("mapped") == 2


@pytest.mark.parametrize(
    "people",
    [
        [ANNA, Entry("105", "ANNA@example.com")],
        [ANNA, Entry("100", "other@example.com")],
    ],
    ids=["same e-mail", "same extension"],
)
def test_duplicates_are_config_errors_and_lose_nothing(people: list[Entry]) -> None:
    with pytest.raises(ConfigError, match="people"):
        Directory(people)
    directory = Directory([ANNA, BOB])
    directory.update_extensions(NFON)
    with pytest.raises(ConfigError):
        directory.replace_people(people)
    assert keys(directory.people()) == ["anna@example.com", "bob@example.com"]


def test_name_for_number() -> None:
    directory = Directory([ANNA, BOB, CARL])
    assert directory.name_for_number("101") == "Bob B."
    assert directory.name_for_number("100") is None  # no name known yet
    directory.update_extensions(NFON)
    assert directory.name_for_number("100") == "Anna Schmidt"
    assert directory.name_for_number("101") == "Bob B."
    assert directory.name_for_number("200") == "Reception"  # NFON knows it, nobody configured
    assert directory.name_for_number("201") is None
    assert directory.name_for_number("102") is None
    assert directory.name_for_number("4989123456") is None


def test_logs_counts_at_info_and_extensions_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = Directory([ANNA])
    with caplog.at_level(logging.INFO, logger="presence_sync.directory"):
        directory.update_extensions(NFON)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.ctx == {  # type: ignore[attr-defined]
        "extensions": 5,
        "mapped": 1,
        "unmapped": 4,
        "configured_not_listed": 0,
        "added": 0,
        "removed": 0,
        "changed": 1,
    }
    assert "200" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="presence_sync.directory"):
        directory.update_extensions(NFON)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [r.ctx for r in debug] == [{"extensions": "101,102,200,201"}]  # type: ignore[attr-defined]


def test_no_configured_person_on_any_nfon_extension_warns_once_until_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = Directory([Entry("900", "x@example.com"), Entry("901", "y@example.com")])
    with caplog.at_level(logging.INFO, logger="presence_sync.directory"):
        directory.update_extensions(NFON)
        directory.update_extensions(NFON)  # the hourly refresh: no second warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].ctx == {
        "configured": 2,
        "nfon_extensions": len(NFON),
        "configured_extensions": "900, 901",
    }

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="presence_sync.directory"):
        directory.replace_people([ANNA])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "again" in caplog.text


def test_nobody_configured_leaves_the_warning_to_the_configuration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = Directory([])
    with caplog.at_level(logging.INFO, logger="presence_sync.directory"):
        directory.update_extensions(NFON)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# --- people from an Entra group ---------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Shaped like ``config.EntraGroupSettings``."""

    group: str = "Phone users"
    extension_from: str = "businessPhones"
    number_prefix: str | None = "+49 89 45300"


def member(email: str, number: str, name: str = "") -> Member:
    return Member(id=f"id-{email}", email=email, display_name=name, values=(number,))


DORA = member("dora@example.com", "+49 89 45300 200", "Dora Frank")
EMIL = member("emil@example.com", "+49 89 45300-201", "Emil Graf")


def test_group_members_on_extensions_are_people_with_their_entra_id() -> None:
    directory = Directory([ANNA], Group())
    directory.update_extensions(NFON)
    change = directory.update_members([DORA, EMIL])
    assert keys(change.added) == ["dora@example.com", "emil@example.com"]
    assert keys(directory.people()) == ["anna@example.com", "dora@example.com", "emil@example.com"]
    dora = directory.person("200")
    assert dora is not None
    assert (dora.email, dora.name, dict(dora.ids)) == (
        "dora@example.com",
        "Dora Frank",
        {ENTRA_ID: "id-dora@example.com"},
    )
    assert directory.matching is not None
    assert directory.matching.unmatched_extensions == ("101", "102")


def test_the_log_counts_typed_people_nfon_does_not_list_not_group_members(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Anna is typed and listed, Zoe is typed on an extension NFON does not
    # list; Dora and Emil come from the group and are nobody's count.
    zoe = Entry("999", "zoe@example.com")
    directory = Directory([ANNA, zoe], Group())
    directory.update_extensions(NFON)
    with caplog.at_level(logging.INFO, logger="presence_sync.directory"):
        directory.update_members([DORA, EMIL])
    (record,) = [r for r in caplog.records if r.getMessage() == "directory updated"]
    assert record.ctx["configured_not_listed"] == 1  # type: ignore[attr-defined]
    assert record.ctx["mapped"] == 3  # type: ignore[attr-defined]


def test_members_wait_for_nfon_extensions() -> None:
    directory = Directory([], Group())
    assert directory.update_members([DORA]) == DirectoryChange()
    assert directory.people() == []
    change = directory.update_extensions(NFON)
    assert keys(change.added) == ["dora@example.com"]


def test_an_entry_under_people_wins_for_its_extension_and_its_email() -> None:
    # Dora is typed on 201, Emil's number says 201 too: the typed entry wins,
    # Emil is not synced (his extension is taken) and nothing conflicts.
    dora_typed = Entry("201", "dora@example.com", groups=["sales"])
    directory = Directory([dora_typed], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    assert keys(directory.people()) == ["dora@example.com"]
    dora = directory.person("201")
    assert dora is not None
    assert dora.groups == frozenset({"sales"})
    assert directory.person("200") is None
    assert directory.matching is not None
    assert directory.matching.conflicts == ()
    assert [m.email for m in directory.matching.unmatched_members] == ["emil@example.com"]


def test_a_conflict_keeps_both_out_and_is_counted() -> None:
    twin = member("zoe@example.com", "+49 89 45300 200")
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, twin, EMIL])
    assert keys(directory.people()) == ["emil@example.com"]
    assert REGISTRY.get_sample_value("presence_sync_directory_conflicts") == 1.0


def test_an_unchanged_refresh_changes_nothing() -> None:
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    assert not directory.update_members([EMIL, DORA])


def test_a_member_who_left_is_removed() -> None:
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    carl = member("carl@example.com", "+49 89 45300 102")
    directory.update_members([DORA, EMIL, carl])
    change = directory.update_members([DORA, EMIL])
    assert keys(change.removed) == ["carl@example.com"]
    assert directory.held is None


def test_a_refresh_removing_more_than_half_is_held_until_the_next_says_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = Directory([ANNA], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    with caplog.at_level(logging.WARNING):
        held = directory.update_members([])
    assert not held
    assert directory.held is not None
    assert (directory.held.removing, directory.held.people) == (2, 2)
    assert "held" in caplog.text
    assert keys(directory.people()) == ["anna@example.com", "dora@example.com", "emil@example.com"]
    # A refresh that brings everyone back lifts the hold...
    assert not directory.update_members([DORA, EMIL])
    assert directory.held is None
    # ...and two in a row that say the same are taken.
    assert not directory.update_members([])
    change = directory.update_members([])
    assert keys(change.removed) == ["dora@example.com", "emil@example.com"]
    assert directory.held is None
    # Half is not more than half: taken at once.
    directory.update_members([DORA, EMIL])
    change = directory.update_members([DORA])
    assert keys(change.removed) == ["emil@example.com"]


@dataclass
class Extra:
    """An entry under ``people:`` without an extension."""

    email: str
    extension: str | None = None
    name: str | None = None
    groups: list[str] = field(default_factory=list)
    ids: Mapping[str, str] = field(default_factory=dict)
    opt_out: list[str] = field(default_factory=list)


def test_an_entry_without_extension_adds_ids_groups_and_opt_outs_to_a_member() -> None:
    extra = Extra("Dora@Example.com", groups=["sales"], ids={"slack_status": "U9"},
                  opt_out=["webhook"])  # fmt: skip
    directory = Directory([extra], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    assert keys(directory.people()) == ["dora@example.com", "emil@example.com"]
    dora = directory.person("200")
    assert dora is not None
    assert dora.groups == frozenset({"sales"})
    assert dora.opt_out == frozenset({"webhook"})
    assert dict(dora.ids) == {ENTRA_ID: "id-dora@example.com", "slack_status": "U9"}
    emil = directory.person("201")
    assert emil is not None
    assert emil.groups == frozenset()


def test_a_reload_to_another_group_keeps_the_people_until_its_first_read() -> None:
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    change = directory.replace_people([], Group(group="Sales phones"))
    assert not change
    assert keys(directory.people()) == ["dora@example.com", "emil@example.com"]
    # A failed read of the new group calls nothing: they stay. Its first
    # read is taken...
    change = directory.update_members([EMIL])
    assert keys(change.removed) == ["dora@example.com"]
    assert keys(directory.people()) == ["emil@example.com"]


def test_the_first_read_of_a_new_group_removing_more_than_half_is_held() -> None:
    directory = Directory([], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    directory.replace_people([], Group(extension_from="mobilePhone"))
    assert not directory.update_members([])
    assert directory.held is not None
    assert (directory.held.removing, directory.held.people) == (2, 2)
    assert keys(directory.people()) == ["dora@example.com", "emil@example.com"]


def test_a_new_number_prefix_re_matches_the_members_held_at_once() -> None:
    directory = Directory([], Group(number_prefix="+49 89 4530"))
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    assert directory.people() == []  # "0 200" is no extension
    change = directory.replace_people([], Group())
    assert keys(change.added) == ["dora@example.com", "emil@example.com"]


def test_a_reload_without_the_group_removes_its_people() -> None:
    directory = Directory([ANNA], Group())
    directory.update_extensions(NFON)
    directory.update_members([DORA, EMIL])
    change = directory.replace_people([ANNA], None)
    assert keys(change.removed) == ["dora@example.com", "emil@example.com"]
    assert keys(directory.people()) == ["anna@example.com"]
