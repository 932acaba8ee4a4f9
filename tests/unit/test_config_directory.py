"""``directory:`` in the configuration: what it takes, what it refuses
(with file, line and key), and rules naming people only the group has."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from presence_sync.config import load, resolve
from presence_sync.errors import ConfigError

HEAD = """\
nfon:
  customer: K1234
  username: api-user
  password: nfon-secret-pw
targets:
  log: {}
"""
MICROSOFT = """\
microsoft:
  tenant_id: 11111111-2222-3333-4444-555555555555
  client_id: 66666666-7777-8888-9999-000000000000
  client_secret: s3cret
"""
DIRECTORY = """\
directory:
  microsoft:
    group: Phone users
    extension_from: extensionAttribute4
    number_prefix: "+49 89 45300"
  refresh: 15m
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_directory_alone_loads_with_its_settings_and_no_warning(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, HEAD + MICROSOFT + DIRECTORY), {})
    assert settings.directory is not None
    group = settings.directory.microsoft
    assert (group.group, group.extension_from, group.number_prefix) == (
        "Phone users",
        "extensionAttribute4",
        "+49 89 45300",
    )
    assert settings.directory.refresh == 900.0
    assert settings.people == []
    assert not [w for w in settings.warnings if w.key == "people"]


def test_defaults_are_business_phones_hourly_and_no_prefix(tmp_path: Path) -> None:
    text = HEAD + MICROSOFT + "directory:\n  microsoft:\n    group: Phone users\n"
    settings = load(_write(tmp_path, text), {})
    assert settings.directory is not None
    assert settings.directory.microsoft.extension_from == "businessPhones"
    assert settings.directory.microsoft.number_prefix is None
    assert settings.directory.refresh == 3600.0


def test_without_people_or_directory_the_warning_stays(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, HEAD), {})
    assert [w.key for w in settings.warnings] == ["people"]


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        (HEAD + DIRECTORY, "directory", "microsoft: section"),
        (
            HEAD + MICROSOFT + DIRECTORY.replace("extensionAttribute4", "extensionAttribute16"),
            "directory.microsoft.extension_from",
            "businessPhones",
        ),
        (
            HEAD + MICROSOFT + DIRECTORY.replace('"+49 89 45300"', '"abc"'),
            "directory.microsoft.number_prefix",
            "in front of the extensions",
        ),
        (
            HEAD + MICROSOFT + DIRECTORY.replace("group: Phone users", "gruop: Phone users"),
            "directory.microsoft.gruop",
            "",
        ),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path: Path, text: str, key: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    found = [p for p in caught.value.problems if p.key == key]
    assert found, "\n".join(map(str, caught.value.problems))
    assert found[0].file == str(path)
    assert found[0].line is not None
    assert needle in found[0].message


RULE = """\
rules:
  - when: {line: in-use, people: [dora@example.com]}
    set: {log: {text: On a call}}
"""


def test_a_rule_may_name_a_person_only_the_group_has(tmp_path: Path) -> None:
    loaded = resolve(_write(tmp_path, HEAD + MICROSOFT + DIRECTORY + RULE), {})
    assert loaded.settings.directory is not None


def test_without_a_directory_such_a_rule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(_write(tmp_path, HEAD + RULE), {})
    assert "no one under `people:`" in str(caught.value)


EXTRA = """\
people:
  - email: dora@example.com
    groups: [sales]
"""


def test_an_entry_without_extension_is_taken_with_a_directory(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, HEAD + MICROSOFT + DIRECTORY + EXTRA), {})
    [entry] = settings.people
    assert (entry.email, entry.extension, entry.groups) == ("dora@example.com", None, ["sales"])


def test_an_entry_without_extension_needs_a_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + EXTRA)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    [problem] = caught.value.problems
    assert (problem.key, problem.message) == ("people[0].extension", "required key missing")
    assert problem.line == 8  # the entry
