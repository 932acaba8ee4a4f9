"""Matching an Entra group's members to NFON extensions (``entra.match``):
every ``extension_from``, with and without ``number_prefix``, numbers as
people write them, every conflict kind and the unmatched."""

from __future__ import annotations

import pytest

from presence_sync.entra import EXTENSION_SOURCES, Member, digits, fold_name, match
from presence_sync.members import read_member

EXTENSIONS: dict[str, str | None] = {
    "12": "Anna Schmidt",
    "112": "Ben Müller",
    "200": "Clara Weber",
    "300": "Reception",
}


def _member(email: str, *values: str, name: str = "") -> Member:
    return Member(id=email.split("@")[0], email=email, display_name=name, values=values)


def _seats(found: object) -> dict[str, str]:
    from presence_sync.entra import Matching

    assert isinstance(found, Matching)
    return {m.member.email: m.extension for m in found.matches}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("+49 89 45300-12", "49894530012"),
        ("+49 (0)89 45300 12", "49894530012"),
        ("+49 (0) 89 / 45300-12", "49894530012"),
        ("0049 89 45300.12", "49894530012"),
        ("(089) 45300-12", "0894530012"),
        ("12", "12"),
        ("", ""),
    ],
)
def test_digits_read_numbers_as_people_write_them(written: str, expected: str) -> None:
    assert digits(written) == expected


def test_names_fold_case_accents_and_spacing() -> None:
    assert fold_name("  Ben   MÜLLER ") == fold_name("ben muller") == "ben muller"
    assert fold_name("Zoë") == fold_name("zoe")
    assert fold_name("Anna") != fold_name("Anne")


@pytest.mark.parametrize(
    "number",
    ["+49 89 45300-12", "+49 (0)89 45300 12", "0049-89-4530012", "+49894530012", "+49 89 45300 12"],
)
def test_with_a_prefix_the_number_is_the_prefix_then_the_extension(number: str) -> None:
    found = match(
        [_member("anna@example.com", number)],
        EXTENSIONS,
        extension_from="businessPhones",
        number_prefix="+49 89 45300",
    )
    assert _seats(found) == {"anna@example.com": "12"}
    # 112 was not meant: the digits after the prefix are exactly "12".
    assert "112" in found.unmatched_extensions


def test_with_a_prefix_another_company_number_matches_nothing() -> None:
    found = match(
        [_member("anna@example.com", "+49 30 1234512")],
        EXTENSIONS,
        extension_from="mobilePhone",
        number_prefix="+49 89 45300",
    )
    assert found.matches == ()
    assert [m.email for m in found.unmatched_members] == ["anna@example.com"]


def test_with_a_prefix_an_extension_nfon_does_not_list_is_unmatched() -> None:
    found = match(
        [_member("anna@example.com", "+49 89 45300 999")],
        EXTENSIONS,
        extension_from="businessPhones",
        number_prefix="+49 89 45300",
    )
    assert found.matches == ()
    assert [m.email for m in found.unmatched_members] == ["anna@example.com"]


def test_without_a_prefix_the_longest_listed_extension_the_digits_end_with() -> None:
    found = match(
        [
            _member("anna@example.com", "+49 (0)89 45300-12"),
            _member("ben@example.com", "+49 89 45300 112"),
        ],
        EXTENSIONS,
        extension_from="businessPhones",
    )
    assert _seats(found) == {"anna@example.com": "12", "ben@example.com": "112"}
    assert found.conflicts == ()
    assert found.unmatched_extensions == ("200", "300")


@pytest.mark.parametrize("source", ["employeeId", "mobilePhone", "extensionAttribute7"])
def test_single_value_attributes_match_with_and_without_prefix(source: str) -> None:
    plain = match([_member("clara@example.com", "200")], EXTENSIONS, extension_from=source)
    assert _seats(plain) == {"clara@example.com": "200"}
    prefixed = match(
        [_member("clara@example.com", "4989 45300 200")],
        EXTENSIONS,
        extension_from=source,
        number_prefix="+49 89 45300",
    )
    assert _seats(prefixed) == {"clara@example.com": "200"}


def test_name_matches_nfon_name_with_case_and_accents_folded() -> None:
    found = match(
        [
            _member("ben@example.com", "BEN MULLER"),
            _member("clara@example.com", "clara  weber"),
            _member("dora@example.com", "Dora Nobody"),
        ],
        EXTENSIONS,
        extension_from="name",
    )
    assert _seats(found) == {"ben@example.com": "112", "clara@example.com": "200"}
    assert [m.email for m in found.unmatched_members] == ["dora@example.com"]
    assert found.unmatched_extensions == ("12", "300")


def test_two_members_on_one_extension_is_a_conflict_and_neither_is_synced() -> None:
    found = match(
        [
            _member("anna@example.com", "+49 89 45300 200"),
            _member("zoe@example.com", "200"),
            _member("clara@example.com", "112"),
        ],
        EXTENSIONS,
        extension_from="businessPhones",
    )
    assert _seats(found) == {"clara@example.com": "112"}
    [conflict] = found.conflicts
    assert conflict.kind == "extension"
    assert conflict.extensions == ("200",)
    assert [m.email for m in conflict.members] == ["anna@example.com", "zoe@example.com"]
    text = conflict.describe("businessPhones")
    assert "extension 200" in text
    assert "anna@example.com" in text
    assert "people:" in text
    assert "200" not in found.unmatched_extensions


def test_one_member_on_two_extensions_is_a_conflict() -> None:
    found = match(
        [_member("anna@example.com", "+49 89 45300 12", "+49 89 45300 200")],
        EXTENSIONS,
        extension_from="businessPhones",
        number_prefix="+49 89 45300",
    )
    assert found.matches == ()
    [conflict] = found.conflicts
    assert conflict.kind == "member"
    assert conflict.extensions == ("12", "200")
    assert conflict.values == ("+49 89 45300 12", "+49 89 45300 200")
    assert "anna@example.com matches 2 extensions" in conflict.describe("businessPhones")
    assert found.unmatched_members == ()


def test_a_member_in_a_conflict_does_not_leave_the_other_on_the_extension_matched() -> None:
    # Anna claims 12 and 200; Clara claims 200: nobody is guessed for 200.
    found = match(
        [
            _member("anna@example.com", "12", "200"),
            _member("clara@example.com", "200"),
        ],
        EXTENSIONS,
        extension_from="businessPhones",
    )
    assert found.matches == ()
    assert sorted(c.kind for c in found.conflicts) == ["extension", "member"]


def test_a_member_without_any_value_is_unmatched_and_so_are_free_extensions() -> None:
    found = match([_member("eve@example.com")], EXTENSIONS, extension_from="businessPhones")
    assert [m.email for m in found.unmatched_members] == ["eve@example.com"]
    assert found.unmatched_extensions == ("112", "12", "200", "300")


@pytest.mark.parametrize("source", EXTENSION_SOURCES)
def test_read_member_takes_the_chosen_attribute(source: str) -> None:
    user = {
        "id": "u1",
        "mail": None,
        "userPrincipalName": "anna@example.com",
        "displayName": "Anna Schmidt",
        "accountEnabled": True,
        "businessPhones": ["+49 89 45300 12", " "],
        "mobilePhone": "+49 170 1",
        "employeeId": "E12",
        "onPremisesExtensionAttributes": {
            f"extensionAttribute{i}": f"attr{i}" for i in range(1, 16)
        },
    }
    member = read_member(user, source)
    assert member is not None
    assert member.email == "anna@example.com"  # no mail: the UPN
    expected = {
        "businessPhones": ("+49 89 45300 12",),
        "mobilePhone": ("+49 170 1",),
        "employeeId": ("E12",),
        "name": ("Anna Schmidt",),
    }.get(source, (f"attr{source.removeprefix('extensionAttribute')}",))
    assert member.values == expected


def test_read_member_skips_disabled_accounts() -> None:
    user = {"id": "u1", "mail": "a@example.com", "accountEnabled": False, "businessPhones": ["1"]}
    assert read_member(user, "businessPhones") is None
