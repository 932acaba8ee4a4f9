"""``check``'s table: extensions come from NFON and are untrusted, so an
escape sequence in one shows escaped, in the table and in the unmatched."""

from __future__ import annotations

from presence_sync.config import Settings
from presence_sync.entra import Matching
from presence_sync.model import Person
from presence_sync.tools import check

EVIL = "2\x1b[2J00"


def _settings() -> Settings:
    return Settings.model_validate(
        {
            "nfon": {"customer": "K1", "username": "u", "password": "p"},
            "microsoft": {"tenant_id": "t", "client_id": "c", "client_secret": "s"},
            "directory": {"microsoft": {"group": "Phone users"}},
        }
    )


def test_extensions_from_nfon_are_escaped_in_the_table_and_the_unmatched() -> None:
    dora = Person(key="dora@example.com", email="dora@example.com", extension=EVIL)
    report = check.Report(
        rows=[check.Row(person=dora, name="Dora", source="businessPhones")],
        matching=Matching(unmatched_extensions=(EVIL, "201")),
    )
    text = "\n".join(check.table(report, _settings()))
    assert "\x1b" not in text
    [row] = [line for line in text.splitlines() if "dora@example.com" in line]
    assert row.startswith("2\\x1b[2J00")
    assert "extensions without a member: 2\\x1b[2J00, 201" in text
