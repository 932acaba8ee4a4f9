"""The admin's commands that need no secret work from a shell that does not
have the service's credentials: under systemd the NFON password, the
Microsoft key and the Slack tokens are files only the service can read
(``$CREDENTIALS_DIRECTORY``), while ``explain``, ``status``, ``resync``,
``pause`` and ``resume`` only read the rules or talk to the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from presence_sync.cli import main
from presence_sync.config import load
from presence_sync.errors import ConfigError
from presence_sync.tools.client import locate

# The systemd layout: every secret a relative *_file that exists only in
# the service's credentials directory, and a private key likewise.
CONFIG = """\
nfon: {customer: K1234, username: u, password_file: nfon-password}
microsoft:
  tenant_id: 11111111-2222-3333-4444-555555555555
  client_id: 66666666-7777-8888-9999-000000000000
  certificate_file: ms-certificate
  certificate_thumbprint: 0123456789abcdef0123456789abcdef01234567
slack: {token_file: slack-token}
people:
  - {extension: "100", email: anna@example.com}
targets:
  teams_presence: {}
  slack_status: {}
rules:
  - name: on the phone
    when: {line: in-use}
    set: {"*": {text: "On a call"}}
http:
  listen: 127.0.0.1:1
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_the_daemon_still_needs_every_secret(config: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config)
    text = str(caught.value)
    for key in ("nfon.password_file", "microsoft.certificate_file", "slack.token_file"):
        assert key in text


def test_explain_answers_without_the_credentials(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["explain", "-c", str(config), "100", "--line", "in-use"])
    out = capsys.readouterr().out
    assert code == 0
    assert 'decided by rule "on the phone"' in out


def test_the_daemon_is_found_without_the_credentials(config: Path) -> None:
    located = locate(config, None)
    assert located.url == "http://127.0.0.1:1"
    assert located.token() is None


def test_a_token_file_the_admin_cannot_read_is_still_an_error(config: Path, tmp_path: Path) -> None:
    config.write_text(CONFIG + "  token_file: http-token\n")
    with pytest.raises(ConfigError) as caught:
        locate(config, None).token()
    assert "http.token_file" in str(caught.value)
    assert "nfon" not in str(caught.value)
    (tmp_path / "http-token").write_text("s3cret-token\n")
    (tmp_path / "http-token").chmod(0o600)
    assert locate(config, None).token() == "s3cret-token"


def test_resync_reaches_for_the_daemon_not_the_secrets(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 1: the command fails for that, naming where
    # it looked, and not for a secret file it has no use for.
    code = main(["resync", "-c", str(config)])
    captured = capsys.readouterr()
    assert code == 1
    assert "http://127.0.0.1:1" in captured.err + captured.out
    assert "nfon-password" not in captured.err + captured.out
