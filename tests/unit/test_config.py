"""The configuration loader: what an admin reads when the file is wrong, and
what the rest of the daemon gets when it is right."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, SecretStr

from presence_sync import config
from presence_sync.cli import main
from presence_sync.config import Duration, HttpURL, Settings, load, reading
from presence_sync.errors import EX_CONFIG, ConfigError, ConfigProblem
from presence_sync.model import Line, LineView, Status
from presence_sync.rules import compile_rules
from presence_sync.targets import base

REPO = Path(__file__).resolve().parents[2]

BASE = """\
nfon:
  customer: K1234
  username: api-user
  password: nfon-secret-pw
people:
  - extension: "100"
    email: anna@example.com
targets:
  fake:
    url: https://hooks.example.com/x
"""


# --- a target kind of our own, standing in for the real ones ------------------


class FakeAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str
    api_key: SecretStr


class FakeOptions(base.TargetOptions):
    url: HttpURL
    token: SecretStr | None = None
    timeout: Duration = 10.0
    auth: FakeAuth | None = None


class FakeTarget:
    info: ClassVar[base.TargetInfo] = base.TargetInfo("fake", "a fake", frozenset({"text"}))
    Options: ClassVar[type[FakeOptions]] = FakeOptions


class BrokenOptions(base.TargetOptions):
    pass


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("presence_sync_test_fake_target")
    module.__dict__["FakeTarget"] = FakeTarget
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(
        base,
        "BUILTIN",
        {
            **base.BUILTIN,
            "fake": f"{module.__name__}:FakeTarget",
            "broken": "presence_sync_test_no_such_module:Nothing",
        },
    )


# --- helpers -------------------------------------------------------------------


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based number of the ``nth`` line of ``path`` containing ``needle``."""
    return where(path, needle, nth)[0]


def where(path: Path, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based line and column where ``needle`` starts the ``nth`` time in ``path``."""
    hits = [
        (i, line.index(needle) + 1)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if needle in line
    ]
    return hits[nth - 1]


def with_people(extra: str, text: str = BASE) -> str:
    """``text`` with ``extra`` lines at the end of ``people:``."""
    return text.replace("targets:\n", extra + "targets:\n", 1)


def fake_options(settings: Settings, name: str = "fake") -> FakeOptions:
    options = settings.targets[name].options
    assert isinstance(options, FakeOptions)
    return options


def problems(path: Path, environ: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ or {})
    return list(caught.value.problems)


def one_problem(path: Path, environ: Mapping[str, str] | None = None) -> ConfigProblem:
    found = problems(path, environ)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def problem_at(found: list[ConfigProblem], key: str) -> ConfigProblem:
    matching = [p for p in found if p.key == key]
    assert matching, f"no problem at {key}: " + "\n".join(map(str, found))
    return matching[0]


# --- a valid file ----------------------------------------------------------------


def test_minimal_file_loads_with_documented_defaults(write: Callable[[str], Path]) -> None:
    settings = load(write(BASE), {})

    assert settings.nfon.base_url == "https://providersupportdata.cloud-cfg.com/v1"
    assert settings.nfon.password.get_secret_value() == "nfon-secret-pw"
    assert settings.nfon.request_timeout == 10.0
    assert settings.nfon.liveness_timeout == 120.0
    assert settings.nfon.reconnect_max_delay == 60.0
    assert settings.microsoft is None
    assert settings.slack is None
    assert settings.timezone == "UTC"
    assert settings.resync.interval == 300.0
    assert settings.resync.directory_interval == 3600.0
    assert settings.state.path == Path("/var/lib/presence-sync/state.db")
    assert settings.http.listen == "127.0.0.1:9477"
    assert settings.http.address == ("127.0.0.1", 9477)
    assert (settings.logging.level, settings.logging.format) == ("info", "auto")
    assert settings.rules is None
    spec = settings.targets["fake"]
    assert (spec.name, spec.kind) == ("fake", "fake")
    assert isinstance(spec.options, FakeOptions)
    assert spec.options.url == "https://hooks.example.com/x"
    assert settings.source_file.endswith("config.yaml")


def test_people_and_lists_are_normalised(write: Callable[[str], Path]) -> None:
    path = write(
        with_people(
            """\
  - extension: "0101"
    email: " Ben.Maier@Example.COM "
    name: Ben
    groups: [sales]
    ids: {fake: U123}
    opt_out: [slack_status]
"""
        )
        + """\
lists:
  vip:
    - "+49 89 123-456"
    - "0049 30 1"
    - {number: "4940 2", name: Big Customer}
"""
    )
    settings = load(path, {})

    ben = settings.people[1]
    assert ben.extension == "0101"
    assert ben.email == "ben.maier@example.com"
    person = ben.to_person()
    assert person.key == "ben.maier@example.com"
    assert person.groups == frozenset({"sales"})
    assert dict(person.ids) == {"fake": "U123"}
    assert person.opt_out == frozenset({"slack_status"})
    assert settings.lists == {"vip": {"4989123456": None, "49301": None, "49402": "Big Customer"}}


def test_yaml_12_scalars_keep_times_and_words_as_text(write: Callable[[str], Path]) -> None:
    # YAML 1.1 would read 18:00 as 1080 and `no` as false.
    path = write(
        BASE.replace("email: anna@example.com", 'email: anna@example.com\n    groups: ["no"]')
        + """\
rules:
  - when: {time: {from: 08:00, to: 18:00}, groups: no}
    set: {fake: {text: on}}
"""
    )
    rules = load(path, {}).rules
    assert rules is not None
    rule = rules[0]
    assert rule["when"] == {"time": {"from": "08:00", "to": "18:00"}, "groups": "no"}
    assert rule["set"] == {"fake": {"text": "on"}}


# --- reading the file -----------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(write: Callable[[str], Path]) -> None:
    path = write(BASE + "resync:\n  interval: [5m\n")

    found = one_problem(path)

    assert found.file == str(path)
    assert found.line == line_of(path, "interval") + 1  # where the parser gave up
    assert found.column is not None
    assert "YAML syntax error" in found.message
    assert str(found).startswith(f"{path}:{found.line}:{found.column}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("just text\n", "the top level must be a mapping"),
    ],
)
def test_file_without_sections_is_refused(
    write: Callable[[str], Path], text: str, message: str
) -> None:
    found = one_problem(write(text))
    assert message in found.message


def test_unsafe_yaml_tag_is_refused(write: Callable[[str], Path]) -> None:
    path = write(BASE + "timezone: !!python/object/apply:os.getcwd []\n")

    found = one_problem(path)

    assert found.line == line_of(path, "python/object")
    assert "python/object" in found.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    found = one_problem(tmp_path / "nope.yaml")
    assert found.file == str(tmp_path / "nope.yaml")
    assert found.message == "file not found"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    found = one_problem(tmp_path)  # a directory
    assert found.message.startswith("cannot read the file")


@pytest.mark.parametrize("char", ["\x08", "\x00", "\x7f", "\x1b"])
def test_control_character_is_a_config_error_with_line_and_column(
    write: Callable[[str], Path], char: str
) -> None:
    path = write(BASE.replace("customer: K1234", f"customer: K1{char}234"))

    found = one_problem(path)

    assert (found.line, found.column) == (line_of(path, "customer"), len("  customer: K1") + 1)
    assert f"U+{ord(char):04X}" in found.message


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever

    found = one_problem(fifo)

    assert found.file == str(fifo)
    assert found.message == "cannot read the file: a FIFO (named pipe), not a regular file"


def test_device_is_refused_unread() -> None:
    found = one_problem(Path("/dev/zero"))  # endless: read whole, a MemoryError
    assert found.message == "cannot read the file: a character device, not a regular file"


def test_file_over_one_mib_is_refused(write: Callable[[str], Path]) -> None:
    path = write(BASE + "# padding\n" * (1 << 17))

    found = one_problem(path)

    assert found.message == "the file is larger than 1 MiB: is it the configuration?"


def test_secret_file_that_is_a_fifo_is_refused(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "pw")
    path = write(BASE.replace("password: nfon-secret-pw", "password_file: pw"))

    found = one_problem(path)

    assert (found.key, found.line) == ("nfon.password_file", line_of(path, "password_file"))
    assert found.message.endswith("a FIFO (named pipe), not a regular file")


def test_value_its_explicit_tag_cannot_be_is_a_config_error(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("customer: K1234", "customer: !!float K1234"))

    found = one_problem(path)

    assert (found.key, found.line) == ("nfon.customer", line_of(path, "customer"))
    assert found.message == "not a valid !!float: 'K1234'"


def test_merge_chain_is_cut_off_at_its_budget(write: Callable[[str], Path]) -> None:
    # Each mapping merges the one before it: n of them cost n*n/2 copied
    # pairs (PyYAML itself recursed 3,000 deep here); hidden under a tag
    # that is refused anyway, so nothing else would stop it.
    chain = "".join(f"  - &m{i} {{<<: *m{i - 1}, k{i}: 0}}\n" for i in range(1, 3000))
    path = write(BASE + "hidden: !x\n  - &m0 {k0: 0}\n" + chain + "lists: {<<: *m2999}\n")

    found = one_problem(path)

    assert found.message == ("merge keys (<<) copy more than 100000 values (an alias bomb?)"), found
    assert found.line is not None
    assert found.line < 500


def test_alias_bomb_is_cut_off_with_its_line(write: Callable[[str], Path]) -> None:
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    path = write(BASE + "lists:\n" + "".join("  " + line for line in laughs.splitlines(True)))

    found = one_problem(path)

    assert found.message == "aliases (*name) expand to more than 100000 values (an alias bomb?)"
    assert found.line is not None
    assert found.line > line_of(path, "lists:")


def test_mapping_merged_twice_is_merged_once() -> None:
    # PyYAML up to 6.0.3 doubled the pairs at each level: 2**30 here.
    text = "a0: &a0 {x: 1, y: 2}\n" + "".join(
        f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 31)
    )
    loader = reading._Loader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    assert root is not None
    assert [len(value.value) for _, value in root.value] == [2] * 31


def test_merged_keys_are_overridden_not_duplicates(write: Callable[[str], Path]) -> None:
    path = write(
        BASE
        + "rules:\n"
        + "  - name: a\n    when: {line: in-use}\n    set: &busy {fake: {text: x}}\n"
        + "  - name: b\n    when: {line: ringing}\n    set: {<<: *busy, fake: {text: y}}\n"
    )
    settings = load(path)
    assert [rule["set"] for rule in settings.rules] == [
        {"fake": {"text": "x"}},
        {"fake": {"text": "y"}},
    ]


def test_duplicate_yaml_key_is_reported(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("  customer: K1234\n", "  customer: K1234\n  customer: K9\n"))

    found = one_problem(path)

    assert (found.line, found.key) == (line_of(path, "K9"), "nfon.customer")
    assert f"first given at line {line_of(path, 'K1234')}" in found.message


# --- positions of model errors -----------------------------------------------------------


def test_unknown_nested_key_names_its_line_and_suggests(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("  username:", "  usernme:"))

    found = problems(path)

    unknown = problem_at(found, "nfon.usernme")
    assert unknown.line == line_of(path, "usernme")
    assert unknown.column == 3
    assert unknown.message == 'unknown key "usernme" (did you mean "username"?)'
    assert str(unknown).startswith(f"{path}:{unknown.line}:3: nfon.usernme: unknown key")


def test_unknown_key_without_close_match_lists_allowed_keys(
    write: Callable[[str], Path],
) -> None:
    path = write(BASE + "resync:\n  tokn: 5\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("resync.tokn", line_of(path, "tokn"))
    assert found.message == 'unknown key "tokn" (expected one of: directory_interval, interval)'


def test_missing_required_key_points_at_the_parent(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("  customer: K1234\n", ""))

    found = one_problem(path)

    assert found.key == "nfon.customer"
    assert found.line == line_of(path, "nfon:")
    assert found.message == "required key missing"


def test_missing_key_of_a_list_item_points_at_the_item(write: Callable[[str], Path]) -> None:
    path = write(with_people("  - email: ben@example.com\n"))

    found = one_problem(path)

    assert (found.key, found.line) == ("people[1].extension", line_of(path, "ben@"))
    assert found.message == "required key missing"


def test_bad_type_points_at_the_value(write: Callable[[str], Path]) -> None:
    path = write(BASE + "http:\n  listen: 9477\n")

    found = one_problem(path)

    assert (found.key, found.line, found.column) == ("http.listen", line_of(path, "9477"), 11)
    assert "host:port" in found.message


def test_bad_section_type_points_at_its_key(write: Callable[[str], Path]) -> None:
    path = write(BASE + "resync:\n  - 5m\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("resync", line_of(path, "resync:"))
    assert "dictionary" in found.message


def test_every_problem_is_reported_at_once(write: Callable[[str], Path]) -> None:
    path = write(
        """\
nfon:
  customer: 1234
  username: api
  password: pw
  request_timeout: soon
people:
  - extension: 100
    email: not-an-address
targets:
  fake: {url: ftp://x, timeout: -1s}
timezone: Mars/Olympus
"""
    )

    found = problems(path)

    assert [(p.key, p.line) for p in found] == [
        ("nfon.customer", 2),
        ("nfon.request_timeout", 5),
        ("people[0].extension", 7),
        ("people[0].email", 8),
        ("targets.fake.url", 10),
        ("targets.fake.timeout", 10),
        ("timezone", 11),
    ]
    text = str(ConfigError(found))
    assert text.count(str(path)) == len(found)


# --- interpolation --------------------------------------------------------------


def test_missing_environment_variable_names_it(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("api-user", "${NFON_API_USERNAME}"))

    found = one_problem(path, {"OTHER": "x"})

    assert (found.key, found.line) == ("nfon.username", line_of(path, "NFON_API_USERNAME"))
    assert found.message == "environment variable NFON_API_USERNAME is not set"


def test_variables_defaults_and_dollar_escapes(write: Callable[[str], Path]) -> None:
    path = write(
        BASE.replace("api-user", "${USER_PREFIX}-${USER_NAME:-fallback}")
        .replace("nfon-secret-pw", "'pa$$${PW_PART:-x}$word'")
        .replace("https://hooks.example.com/x", "${HOOK:-https://${HOOK_HOST:-h.example}/p}")
    )

    settings = load(path, {"USER_PREFIX": "api", "USER_NAME": "", "PW_PART": "ss"})

    assert settings.nfon.username == "api-fallback"  # empty counts as unset, like the shell
    assert settings.nfon.password.get_secret_value() == "pa$ss$word"
    assert fake_options(settings).url == "https://h.example/p"


def test_unused_default_may_name_a_missing_variable() -> None:
    assert config.interpolate("${A:-${B}}", {"A": "a"}) == "a"
    with pytest.raises(ValueError, match="B is not set"):
        config.interpolate("${A:-${B}}", {})


@pytest.mark.parametrize("text", ["${}", "${1X}", "${A", "${A:-x", "${A-x}"])
def test_malformed_reference_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"malformed \$\{"):
        config.interpolate(text, {"A": "a"})


@given(st.text())
def test_escaped_text_comes_back_unchanged(text: str) -> None:
    assert config.interpolate(text.replace("$", "$$"), {}) == text


# --- secret files ----------------------------------------------------------------


def test_secret_file_relative_to_credentials_directory(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "nfon-password").write_text("from-systemd\n")
    (creds / "hook-token").write_text("tok\r\n")
    path = write(
        BASE.replace("password: nfon-secret-pw", "password_file: nfon-password")
        + "    token_file: hook-token\n"
    )

    settings = load(path, {"CREDENTIALS_DIRECTORY": str(creds)})

    assert settings.nfon.password.get_secret_value() == "from-systemd"
    token = fake_options(settings).token
    assert token is not None
    assert token.get_secret_value() == "tok"


def test_secret_file_with_interpolated_absolute_path(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("abs\n")
    path = write(
        BASE.replace("password: nfon-secret-pw", "password_file: ${CREDENTIALS_DIRECTORY}/pw")
    )

    settings = load(path, {"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert settings.nfon.password.get_secret_value() == "abs"


def test_secret_file_relative_to_config_without_credentials_directory(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "user").write_text("api-from-file\n")
    (tmp_path / "key").write_text("nested-key\n")
    path = write(
        BASE.replace("username: api-user", "username_file: user")
        + "    auth: {user: u, api_key_file: key}\n"
    )

    settings = load(path, {})

    assert settings.nfon.username == "api-from-file"
    auth = fake_options(settings).auth
    assert auth is not None
    assert auth.api_key.get_secret_value() == "nested-key"


def test_secret_and_secret_file_together_is_an_error(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("x\n")
    path = write(
        BASE.replace("  password: nfon-secret-pw\n", "  password: a\n  password_file: pw\n")
    )

    found = one_problem(path)

    assert (found.key, found.line) == ("nfon.password_file", line_of(path, "password_file"))
    assert found.message == "give either password or password_file, not both"


def test_unreadable_secret_file_names_path_not_secret(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n")
    path = write(
        BASE.replace("password: nfon-secret-pw", "password_file: missing")
        + "    token_file: empty\n"
    )

    found = problems(path)

    missing = problem_at(found, "nfon.password_file")
    assert missing.line == line_of(path, "password_file")
    assert str(tmp_path / "missing") in missing.message
    assert "No such file" in missing.message
    empty = problem_at(found, "targets.fake.token_file")
    assert empty.line == line_of(path, "token_file")
    assert "is empty" in empty.message
    assert len(found) == 2  # no follow-up "password: required key missing"


def test_missing_client_secret_file_is_one_problem_naming_the_unit_line(
    write: Callable[[str], Path],
) -> None:
    path = write(
        BASE + "microsoft:\n  tenant_id: t\n  client_id: c\n  client_secret_file: ms-secret\n"
    )

    found = one_problem(path, {})  # no "no credential: give client_secret" beside it

    assert (found.key, found.line) == (
        "microsoft.client_secret_file",
        line_of(path, "client_secret_file"),
    )
    assert found.message.startswith(f"cannot read {path.parent / 'ms-secret'}: No such file")
    assert "LoadCredential=ms-secret:/etc/credstore/presence-sync/ms-secret" in found.message
    assert "presence-sync check --credentials DIR" in found.message


def test_missing_credential_under_systemd_names_the_unit_line(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    path = write(BASE.replace("password: nfon-secret-pw", "password_file: nfon-password"))

    found = one_problem(path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})

    assert "LoadCredential=nfon-password:/etc/credstore/presence-sync/nfon-password" in (
        found.message
    )
    assert "--credentials" not in found.message


def test_no_credential_at_all_is_still_said(write: Callable[[str], Path]) -> None:
    path = write(BASE + "microsoft:\n  tenant_id: t\n  client_id: c\n")
    found = one_problem(path)
    assert found.message.startswith("no credential: give client_secret")


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_secret_file_readable_by_others_is_warned_about(
    write: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    warned: bool,
) -> None:
    secret = tmp_path / "nfon-password"
    secret.write_text("file-secret-pw\n")
    secret.chmod(mode)
    path = write(BASE.replace("password: nfon-secret-pw", "password_file: nfon-password"))

    with caplog.at_level(logging.WARNING, logger="presence_sync.config"):
        settings = load(path, {})

    assert settings.nfon.password.get_secret_value() == "file-secret-pw"
    records = [r for r in caplog.records if "secret file" in r.getMessage()]
    if not warned:
        assert records == []
        return
    (record,) = records
    assert record.levelno == logging.WARNING
    assert "readable by others" in record.getMessage()
    assert "chmod 600" in record.getMessage()
    context = record.__dict__["ctx"]
    assert context == {"path": str(secret), "mode": f"{mode:04o}", "key": "nfon.password_file"}
    assert "file-secret-pw" not in caplog.text


def test_secrets_never_show_in_repr(write: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "ms").write_text("ms-secret-value\n")
    path = write(
        BASE
        + """\
    token: hook-secret-token
    auth: {user: u, api_key: nested-secret-key}
microsoft:
  tenant_id: t
  client_id: c
  client_secret_file: ms
slack:
  token: xoxb-slack-secret
lists:
  vip: ["+49 89 555 0100"]
"""
    )

    settings = load(path, {})

    assert settings.microsoft is not None
    assert settings.microsoft.client_secret is not None
    assert settings.microsoft.client_secret.get_secret_value() == "ms-secret-value"
    for shown in (repr(settings), str(settings), repr(settings.targets)):
        for secret in (
            "nfon-secret-pw",
            "hook-secret-token",
            "nested-secret-key",
            "ms-secret-value",
            "xoxb-slack-secret",
            "49895550100",  # phone numbers are personal data
        ):
            assert secret not in shown


# --- value rules ------------------------------------------------------------------


def test_unquoted_extension_asks_for_quotes(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace('extension: "100"', "extension: 0100"))

    found = one_problem(path)

    assert (found.key, found.line) == ("people[0].extension", line_of(path, "0100"))
    assert "quotes" in found.message


def test_unquoted_list_number_asks_for_quotes(write: Callable[[str], Path]) -> None:
    path = write(BASE + "lists:\n  vip:\n    - 4989123\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("lists.vip[0]", line_of(path, "4989123"))
    assert "quotes" in found.message


def test_duplicate_email_any_case_is_reported_at_the_duplicate(
    write: Callable[[str], Path],
) -> None:
    path = write(with_people('  - extension: "101"\n    email: Anna@Example.com\n'))

    found = one_problem(path)

    assert (found.key, found.line) == ("people[1].email", line_of(path, "Anna@Example.com"))
    assert f"people[0] (line {line_of(path, 'anna@example.com')})" in found.message


def test_duplicate_extension_is_reported(write: Callable[[str], Path]) -> None:
    path = write(with_people('  - extension: "100"\n    email: ben@example.com\n'))

    found = one_problem(path)

    assert (found.key, found.line) == ("people[1].extension", line_of(path, '"100"', 2))
    assert "duplicate extension" in found.message


def test_opt_out_of_a_target_that_does_not_exist(write: Callable[[str], Path]) -> None:
    path = write(with_people("    opt_out: [slak_status]\n"))

    found = one_problem(path)

    assert (found.key, found.line) == ("people[0].opt_out[0]", line_of(path, "slak_status"))
    assert 'did you mean "slack_status"?' in found.message


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_durations(written: object, seconds: float) -> None:
    assert config.parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["-5s", -1, "5 minutes", "m", "", True, [1], float("inf")])
def test_bad_durations(written: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(written)


def test_bad_duration_in_file_names_line(write: Callable[[str], Path]) -> None:
    path = write(BASE + "resync:\n  interval: 5 mins\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("resync.interval", line_of(path, "5 mins"))
    assert "not a duration" in found.message


def test_zero_interval_is_refused(write: Callable[[str], Path]) -> None:
    found = one_problem(write(BASE + "resync:\n  interval: 0s\n"))
    assert found.key == "resync.interval"
    assert "greater than 0" in found.message


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ('"[::1]:9477"', ("::1", 9477)),
        ("localhost:80", ("localhost", 80)),
        ('""', None),
        ("null", None),
    ],
)
def test_http_listen(
    write: Callable[[str], Path], listen: str, address: tuple[str, int] | None
) -> None:
    settings = load(write(BASE + f"http:\n  listen: {listen}\n"), {})
    assert settings.http.address == address


def test_state_url_selects_postgresql_with_the_password_from_a_file(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    (tmp_path / "db-password").write_text("s3cret\n")
    (tmp_path / "db-password").chmod(0o600)
    path = write(
        BASE + "state:\n  url: postgresql://presence@db.example:5433/presence?sslmode=verify-full\n"
        "  password_file: db-password\n"
    )

    state = load(path, {"STATE_DIRECTORY": "/var/lib/ps"}).state

    assert state.url == "postgresql://presence@db.example:5433/presence?sslmode=verify-full"
    assert state.path is None
    assert state.password is not None
    assert state.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(state)


def test_state_path_and_url_are_exclusive(write: Callable[[str], Path]) -> None:
    path = write(BASE + "state:\n  path: /var/lib/ps/state.db\n  url: postgresql://p@db/presence\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("state", line_of(path, "state:"))
    assert "state.path" in found.message
    assert "state.url" in found.message
    assert "not both" in found.message


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("  url: mysql://p@db/presence\n", "must be a postgresql:// URL"),
        ("  url: postgresql://p:hunter2@db/presence\n", "must not carry the password"),
        ("  url: postgresql://p@db/presence?password=hunter2\n", "must not carry the password"),
        (
            "  url: postgresql://p@db/presence?sslmode=require&pass%77ord=hunter2\n",
            "must not carry the password",
        ),
        ("  url: postgresql://p@db\n", "must name the database"),
        ("  url: postgresql://p@db:port/presence\n", "must be a postgresql:// URL"),
        ("  password: s3cret\n", "for state.url only"),
    ],
)
def test_bad_state_url(write: Callable[[str], Path], state: str, message: str) -> None:
    path = write(BASE + "state:\n" + state)

    found = one_problem(path)

    assert found.key.startswith("state")
    assert message in found.message
    assert "hunter2" not in str(found)
    assert "s3cret" not in str(found)


def test_a_password_in_the_state_urls_query_exits_78_without_showing_it(
    write: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # libpq would take ?password= as readily as user:password@.
    path = write(BASE + "state:\n  url: postgresql://p@db:5432/presence?password=hunter2\n")

    assert main(["check", "--offline", "-c", str(path)]) == EX_CONFIG

    err = capsys.readouterr().err
    assert f"{path}:{line_of(path, 'postgresql:')}:" in err
    assert "state.url" in err
    assert "must not carry the password" in err
    assert "hunter2" not in err


@pytest.mark.parametrize("listen", ["9477", "[nope]:1", "host:70000", "a b:1", "::1:9477"])
def test_bad_http_listen(write: Callable[[str], Path], listen: str) -> None:
    found = one_problem(write(BASE + f'http:\n  listen: "{listen}"\n'))
    assert found.key == "http.listen"


def test_http_names_beside_the_address(write: Callable[[str], Path]) -> None:
    text = (
        "http:\n  public_url: https://presence.example.com/\n"
        '  allowed_hosts: [presence.internal, "[::1]:8080", "status.example.org:80"]\n'
    )
    settings = load(write(BASE + text), {})
    assert settings.http.public_url == "https://presence.example.com/"
    assert settings.http.allowed_hosts == (
        "presence.internal",
        "[::1]:8080",
        "status.example.org:80",
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("public_url: presence.example.com", "http.public_url"),
        ("public_url: ftp://presence.example.com", "http.public_url"),
        ('allowed_hosts: ["a b"]', "http.allowed_hosts[0]"),
        ('allowed_hosts: [ok.example.com, "host:99999"]', "http.allowed_hosts[1]"),
    ],
)
def test_bad_http_names(write: Callable[[str], Path], line: str, key: str) -> None:
    path = write(BASE + f"http:\n  {line}\n")
    found = one_problem(path)
    assert (found.key, found.line) == (key, line_of(path, line.split(":")[0] + ":"))


def test_state_path_defaults_to_systemd_state_directory(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    path = write(BASE)
    assert load(path, {"STATE_DIRECTORY": "/var/lib/ps"}).state.path == Path("/var/lib/ps/state.db")
    relative = write(BASE + "state:\n  path: data/state.db\n")
    assert load(relative, {}).state.path == tmp_path / "data" / "state.db"


def test_ca_bundle_must_exist(write: Callable[[str], Path], tmp_path: Path) -> None:
    path = write(BASE + "tls:\n  ca_bundle: missing.pem\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("tls.ca_bundle", line_of(path, "missing.pem"))
    assert str(tmp_path / "missing.pem") in found.message


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ("", "no credential"),
        ("  client_secret: s\n  certificate_thumbprint: " + "a" * 40 + "\n", "not both"),
        ("  certificate_thumbprint: " + "a" * 40 + "\n", "go together"),
    ],
)
def test_microsoft_needs_exactly_one_credential(
    write: Callable[[str], Path], credentials: str, message: str
) -> None:
    path = write(BASE + "microsoft:\n  tenant_id: t\n  client_id: c\n" + credentials)

    found = one_problem(path)

    assert (found.key, found.line) == ("microsoft", line_of(path, "microsoft:"))
    assert message in found.message


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o604, True)])
def test_microsoft_certificate(
    write: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    warned: bool,
) -> None:
    (tmp_path / "app.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "app.pem").chmod(mode)
    path = write(
        BASE + "microsoft:\n  tenant_id: t\n  client_id: c\n  certificate_file: app.pem\n"
        "  certificate_thumbprint: 'ab:cd:" + "0" * 36 + "'\n"
    )

    with caplog.at_level(logging.WARNING, logger="presence_sync.config"):
        ms = load(path, {}).microsoft

    warnings = [r.__dict__["ctx"] for r in caplog.records if "secret file" in r.getMessage()]
    expected = {"path": str(tmp_path / "app.pem"), "mode": f"{mode:04o}", "key": "certificate_file"}
    assert warnings == ([expected] if warned else [])

    assert ms is not None
    assert ms.certificate_file == tmp_path / "app.pem"
    assert ms.certificate_thumbprint == "ABCD" + "0" * 36


def test_microsoft_certificate_relative_path_is_a_systemd_credential(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ms-certificate").write_text("-----BEGIN PRIVATE KEY-----\n")
    (credentials / "ms-certificate").chmod(0o400)
    path = write(
        BASE + "microsoft:\n  tenant_id: t\n  client_id: c\n  certificate_file: ms-certificate\n"
        "  certificate_thumbprint: '" + "0" * 40 + "'\n"
    )

    ms = load(path, {"CREDENTIALS_DIRECTORY": str(credentials)}).microsoft

    assert ms is not None
    assert ms.certificate_file == credentials / "ms-certificate"


# --- targets -------------------------------------------------------------------


def test_unknown_target_kind_lists_known_kinds(write: Callable[[str], Path]) -> None:
    path = write(BASE + "  pager: {}\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("targets.pager", line_of(path, "pager"))
    assert found.message == (
        'unknown target kind "pager" (expected one of: broken, fake, log, outlook_calendar, '
        "slack_dnd, slack_status, teams_presence, teams_status_message, webhook)"
    )


def test_explicit_kind_and_its_errors_point_into_the_target(
    write: Callable[[str], Path],
) -> None:
    path = write(
        BASE
        + """\
  second:
    kind: fake
    url: https://two.example.com/
    timeout: forever
    tokn: x
  third: {kind: nope}
"""
    )

    found = problems(path)

    timeout = problem_at(found, "targets.second.timeout")
    assert timeout.line == line_of(path, "forever")
    unknown = problem_at(found, "targets.second.tokn")
    assert unknown.line == line_of(path, "tokn")
    assert 'did you mean "token"?' in unknown.message
    kind = problem_at(found, "targets.third.kind")
    assert kind.line == line_of(path, "nope")
    assert len(found) == 3


def test_target_with_two_names_of_one_kind(write: Callable[[str], Path]) -> None:
    path = write(BASE + "  other: {kind: fake, url: 'http://127.0.0.1:1/'}\n")

    targets = load(path, {}).targets

    assert {name: spec.kind for name, spec in targets.items()} == {
        "fake": "fake",
        "other": "fake",
    }


def test_target_that_cannot_be_imported_is_a_config_error(
    write: Callable[[str], Path],
) -> None:
    path = write(BASE + "  broken: {}\n")

    found = one_problem(path)

    assert (found.key, found.line) == ("targets.broken", line_of(path, "broken"))
    assert "cannot be loaded" in found.message


def test_target_without_options_is_validated_as_empty(write: Callable[[str], Path]) -> None:
    path = write(BASE.replace("    url: https://hooks.example.com/x\n", ""))

    found = one_problem(path)

    assert (found.key, found.line) == ("targets.fake.url", line_of(path, "fake:"))
    assert found.message == "required key missing"


@pytest.mark.parametrize("targets", ["targets: {}\n", "targets:\n", ""])
def test_no_target_enabled(write: Callable[[str], Path], targets: str) -> None:
    text = BASE.split("targets:")[0] + targets
    found = one_problem(write(text))
    assert found.key == "targets"
    assert "no target enabled" in found.message


# --- positions for later stages (rules.py) -------------------------------------


def test_locate_and_problem_for_rule_paths(write: Callable[[str], Path]) -> None:
    path = write(
        BASE
        + """\
rules:
  - name: calls
    when:
      line: in-use
      presence: [dnd, away]
    set:
      fake: {text: "On a call"}
"""
    )
    settings = load(path, {})

    assert settings.locate(["rules", 0, "when", "line"]) == where(path, "in-use")
    assert settings.locate(["rules", 0, "when", "presence", 1]) == where(path, "away")
    assert settings.locate(["rules", 0, "when"], key=True) == where(path, "when:")
    # No such key: the nearest ancestor that exists, by the line naming it.
    assert settings.locate(["rules", 0, "when", "time", "from"]) == where(path, "when:")
    assert settings.locate(["nowhere"]) == (1, 1)

    found = settings.problem(["rules", 0, "set", "fake", "text"], "bad field")
    assert found == ConfigProblem(
        str(path), *where(path, '"On a call"'), "rules[0].set.fake.text", "bad field"
    )
    star = settings.problem(["rules", 0, "set", "*"], "x")
    assert star.key == 'rules[0].set["*"]'


def test_settings_built_in_code_locate_nothing() -> None:
    settings = Settings.model_validate(
        {"nfon": {"customer": "K1", "username": "u", "password": "p"}}
    )
    assert settings.source_file == "<memory>"
    assert settings.locate(["rules", 0]) == (None, None)
    assert str(settings.problem(["rules", 0], "x")) == "<memory>: rules[0]: x"


# --- the shipped example ----------------------------------------------------------


def _uncomment(text: str, first: str) -> str:
    """Turn the commented-out block that starts with the line ``# {first}``
    (at any indentation) into YAML, up to the first line that is no comment."""
    lines = text.splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.strip() == f"# {first}")
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        lines[i] = "\n" if lines[i].strip() == "#" else lines[i].replace("# ", "", 1)
        i += 1
    return "".join(lines)


def test_example_config_loads(tmp_path: Path) -> None:
    (tmp_path / "nfon-password").write_text("pw\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}

    settings = load(REPO / "config.example.yaml", env)

    assert settings.nfon.customer == "K1234"
    assert settings.nfon.password.get_secret_value() == "pw"
    # The webhook is shipped commented out: no receiver of yours, no deliveries.
    assert {name: spec.kind for name, spec in settings.targets.items()} == {"log": "log"}
    assert [p.email for p in settings.people] == ["anna@example.com", "ben@example.com"]
    assert settings.lists["vip"]["49309876543"] == "Big Customer Ltd"
    assert settings.rules is not None
    assert len(settings.rules) == 2


def test_example_config_commented_sections_are_valid(tmp_path: Path) -> None:
    for name in ("nfon-password", "ms-client-secret", "slack-token"):
        (tmp_path / name).write_text("s3cret\n")
    (tmp_path / "slack-anna").write_text("xoxp-anna\n")
    text = (REPO / "config.example.yaml").read_text()
    for block in ("microsoft:", "slack:", "- name: VIP calls", "webhook:"):
        text = _uncomment(text, block)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "WEBHOOK_URL": "https://hooks.example.com/x"}

    settings = load(path, env)

    assert settings.microsoft is not None
    assert settings.slack is not None
    assert settings.slack.user_token("anna@example.com") == "xoxp-anna"
    assert settings.rules is not None
    assert [rule["name"] for rule in settings.rules] == ["on a call", "do not disturb", "VIP calls"]
    infos = {n: base.target_class(s.kind).info for n, s in settings.targets.items()}
    compiled = compile_rules(
        settings.rules,
        targets=infos,
        lists=settings.lists,
        timezone=settings.timezone,
        problem=settings.problem,
    )
    anna = settings.people[0].to_person()
    star = Status(
        availability="Busy", activity="InACall", text="On a call", emoji=":telephone_receiver:"
    )
    on_a_call = compiled.evaluate(
        anna, LineView("100", Line.IN_USE), datetime(2026, 3, 2, tzinfo=UTC)
    )
    assert on_a_call == {
        "log": star,
        "webhook": star,
    }


# --- everything in one go, and warnings ---------------------------------------------


def test_a_bad_rule_and_a_bad_other_key_are_reported_together(
    write: Callable[[str], Path],
) -> None:
    path = write(
        BASE.replace("  password: nfon-secret-pw\n", "  password: nfon-secret-pw\n  colour: red\n")
        + """\
rules:
  - name: calls
    when: {line: in_use}
    set: {fake: {text: On a call}}
"""
    )

    found = problems(path)

    assert [(p.key, p.line) for p in found] == [
        ("nfon.colour", line_of(path, "colour")),
        ("rules[0].when.line", line_of(path, "in_use")),
    ]
    assert found[0].file == found[1].file == str(path)
    assert 'did you mean "in-use"?' in found[1].message


def test_rules_are_checked_even_when_a_target_kind_is_unknown(
    write: Callable[[str], Path],
) -> None:
    # One problem for the kind, one for the rule's own mistake; none for the
    # rule naming the target whose kind could not be loaded.
    path = write(
        BASE
        + """\
  pager: {kind: pagr}
rules:
  - when: {line: in-use}
    set: {pager: {text: call}, fake: {colour: red}}
"""
    )

    found = problems(path)

    assert [p.key for p in found] == ["targets.pager.kind", "rules[0].set.fake.colour"]


def test_an_empty_people_list_is_a_warning_with_its_line(write: Callable[[str], Path]) -> None:
    nobody = BASE.replace('people:\n  - extension: "100"\n    email: anna@example.com\n', "")
    path = write(nobody + "people: []\n")

    settings = load(path, {})

    assert settings.people == []
    [warning] = settings.warnings
    assert (warning.file, warning.line, warning.key) == (
        str(path),
        line_of(path, "people"),
        "people",
    )
    assert "no one is listed" in warning.message
    assert load(write(BASE), {}).warnings == ()
