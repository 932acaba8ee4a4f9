"""The systemd unit, its install guide and the example configuration agree,
checked from the files as shipped: paths, modes, credential names, the
command the unit starts. The guide's own layout, built in a temporary
directory, passes the guide's own check. (``.ci/run`` runs
``systemd-analyze verify`` and ``security`` on the unit itself.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from documented import subcommands

from presence_sync.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "presence-sync.service"
GUIDE = ROOT / "systemd" / "README.md"
EXAMPLE = ROOT / "config.example.yaml"
VENV = "/opt/presence-sync"
CREDSTORE = "/etc/credstore/presence-sync"


def unit_entries(*, commented: bool = False) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment of the unit, in order;
    with ``commented``, also the commented-out ``#Key=value`` lines."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if commented and re.fullmatch(r"#[A-Z][A-Za-z]+=.*", line):
            line = line[1:]
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str, *, commented: bool = False) -> list[str]:
    return [v for _, k, v in unit_entries(commented=commented) if k == key]


def unit_value(key: str) -> str:
    [value] = unit_values(key)
    return value


def credentials(*, commented: bool = False) -> dict[str, str]:
    """``LoadCredential=NAME:PATH`` lines: name → path."""
    pairs = [v.split(":", 1) for v in unit_values("LoadCredential", commented=commented)]
    return {name: path for name, path in pairs}


def guide_install_block() -> list[str]:
    """The shell lines of the guide's "Install" code block, comments removed."""
    text = GUIDE.read_text()
    section = text[text.index("## Install") :]
    block = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    return [line.strip() for line in block.splitlines() if line.strip() and line[0] != "#"]


def guide_command(program: str) -> list[str]:
    """The install block's command line that runs ``program`` (first word)."""
    for line in guide_install_block():
        words = shlex.split(line, comments=True)
        if words and words[0] == program:
            return words
    raise AssertionError(f"the guide's install block has no {program} command")


def guide_check_command() -> list[str]:
    for line in guide_install_block():
        words = shlex.split(line, comments=True)
        if words and words[0].endswith("/presence-sync") and "check" in words:
            return words
    raise AssertionError("the guide's install block has no presence-sync check command")


# --- the command the unit starts ------------------------------------------------------


def test_exec_start_runs_the_daemon_from_the_guides_venv_with_the_guides_config() -> None:
    argv = shlex.split(unit_value("ExecStart"))
    assert argv[0] == f"{VENV}/bin/presence-sync"
    # The system's interpreter by its full path: a bare python3 may be root's
    # pyenv one under /root, which ProtectHome=yes hides from the service.
    assert shlex.split(next(line for line in guide_install_block() if "-m venv" in line)) == [
        "/usr/bin/python3",
        "-m",
        "venv",
        VENV,
    ]
    assert unit_value("ProtectHome") == "yes"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == "/etc/presence-sync/config.yaml"
    assert not args.dry_run
    assert unit_value("Type") == "notify"


def test_config_is_readable_by_the_dynamic_user_and_modes_match_the_guide() -> None:
    # systemd does not chown a ConfigurationDirectory=, and warns at each
    # start when an existing one's mode differs from the unit's.
    assert unit_value("DynamicUser") == "yes"
    assert unit_value("ConfigurationDirectory") == "presence-sync"
    unit_mode = int(unit_value("ConfigurationDirectoryMode"), 8)
    lines = guide_install_block()
    [made] = [line for line in lines if line.endswith(" /etc/presence-sync")]
    assert made.startswith("install -d -m ")
    dir_mode = int(shlex.split(made)[3], 8)
    [copied] = [
        line
        for line in lines
        if line.startswith("install ") and line.endswith(" /etc/presence-sync/config.yaml")
    ]
    assert shlex.split(copied)[:4] == ["install", "-m", "0644", "config.example.yaml"]
    file_mode = int(shlex.split(copied)[2], 8)

    assert dir_mode == unit_mode
    assert dir_mode & 0o005 == 0o005, "others (the dynamic user) must enter and list"
    assert file_mode & 0o004, "others (the dynamic user) must read the configuration"
    assert not file_mode & 0o022, "only root writes the configuration"


def test_state_lives_in_the_state_directory(tmp_path: Path) -> None:
    from presence_sync.config import DEFAULT_STATE_PATH, load

    assert unit_value("StateDirectory") == "presence-sync"
    state_dir = "/var/lib/presence-sync"
    # ProtectSystem=strict: the database can only be where the unit lets it write.
    writable = [Path(state_dir), *map(Path, unit_values("ReadWritePaths"))]
    assert DEFAULT_STATE_PATH.parent in writable
    (tmp_path / "nfon-password").write_text("pw\n")
    env = {"STATE_DIRECTORY": state_dir, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    settings = load(EXAMPLE, env)
    assert settings.state.path.parent in writable


def test_documentation_points_to_files_the_install_creates() -> None:
    docs = " ".join(unit_values("Documentation")).split()
    assert docs
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"
    ]
    prefix = f"file://{VENV}/"
    for uri in docs:
        assert uri.startswith(prefix), uri
        installed = PurePosixPath(uri.removeprefix(prefix))
        sources = data_files.get(str(installed.parent), [])
        shipped = [
            path
            for pattern in sources
            for path in ROOT.glob(pattern)
            if path.name == installed.name and path.is_file()
        ]
        assert shipped, f"{uri}: pip does not install {installed} (pyproject data-files)"


# --- credentials: unit, guide, example and docs name the same files -------------------


_FILE_KEY = re.compile(r"^\s*(?:#\s*)*-?\s*\w+_file:\s*([^\s#`|]+)", re.MULTILINE)
_FILE_CODE = re.compile(r"`[\w.\[\]]*_file:\s*([^`\s]+)`")
_PER_PERSON = re.compile(r"slack-[a-z0-9<>.-]+")


def referenced_credentials() -> dict[str, set[str]]:
    """Relative ``*_file:`` values in the example and the docs (commented-out
    options included): credential name → files naming it."""
    found: dict[str, set[str]] = {}
    for path in [EXAMPLE, GUIDE, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in [*_FILE_KEY.finditer(text), *_FILE_CODE.finditer(text)]:
            value = match.group(1)
            if value.startswith(("/", "$")):
                continue
            found.setdefault(value, set()).add(path.name)
    return found


def test_every_credential_is_loaded_from_a_file_named_like_it() -> None:
    # What `check --offline --credentials DIR` reads as DIR/NAME is what the
    # service finds as $CREDENTIALS_DIRECTORY/NAME.
    every = credentials(commented=True)
    assert every
    for name, source in every.items():
        assert source == f"{CREDSTORE}/{name}", f"LoadCredential={name}:{source}"
    assert "/run/credentials/presence-sync/" not in "".join(
        p.read_text() for p in (ROOT / "docs").glob("*.md")
    )


def test_credentials_the_example_and_docs_use_are_in_the_unit() -> None:
    in_unit = set(credentials(commented=True))
    referenced = referenced_credentials()
    assert {"nfon-password", "ms-client-secret", "slack-token"} <= set(referenced)
    for name, where in referenced.items():
        assert name in in_unit or _PER_PERSON.fullmatch(name), (
            f"{name} ({', '.join(sorted(where))}) has no LoadCredential= line in the unit"
        )


def test_the_unit_offers_exactly_the_credentials_the_example_uses() -> None:
    # http-token lands with the HTTP API's token (http.token_file); until the
    # example shows it, only the unit and the guide name it.
    example = {name for name, where in referenced_credentials().items() if EXAMPLE.name in where}
    in_unit = set(credentials(commented=True))
    assert in_unit - {"http-token"} == example - {"http-token"}


def test_the_guide_lists_every_credential_of_the_unit() -> None:
    table = GUIDE.read_text()
    listed = set(re.findall(r"^\| `([a-z<>-]+)` \|", table, re.MULTILINE))
    assert set(credentials(commented=True)) - {"slack-anna"} <= listed
    assert "slack-<person>" in listed


def test_only_the_credentials_the_example_needs_are_enabled() -> None:
    # An enabled LoadCredential= whose file is missing stops the service.
    enabled = set(credentials())
    needed = {
        value
        for line in EXAMPLE.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for value in re.findall(r"_file:\s*(\S+)", line)
    }
    assert enabled == needed == {"nfon-password"}


def test_environment_file_is_optional_and_beside_the_configuration() -> None:
    [env_file] = unit_values("EnvironmentFile")
    assert env_file == "-/etc/presence-sync/environment"


# --- the guide's layout passes the guide's check --------------------------------------


def _moved(path: str, root: Path) -> Path:
    return root / path.lstrip("/")


def _build_guide_layout(root: Path) -> dict[str, str]:
    """What the guide's steps 2 and 3 make, under ``root``: the example as
    the configuration, and one secret file per enabled credential, where the
    unit loads it from. Returns credential name → secret written."""
    config = _moved("/etc/presence-sync/config.yaml", root)
    config.parent.mkdir(parents=True)
    shutil.copy(EXAMPLE, config)
    config.chmod(0o644)
    secrets = {}
    for name, source in credentials().items():
        target = _moved(source, root)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secrets[name] = f"secret of {name}"
        target.write_text(secrets[name] + "\n")
        target.chmod(0o600)
    return secrets


def test_the_guides_check_passes_on_the_guides_own_layout(tmp_path: Path) -> None:
    secrets = _build_guide_layout(tmp_path)
    check = guide_check_command()
    assert check[0] == f"{VENV}/bin/presence-sync"
    credentials_dir = check[check.index("--credentials") + 1]
    assert credentials_dir == CREDSTORE
    config = check[check.index("-c") + 1]

    if "check" in subcommands(build_parser()):
        argv = [a if not a.startswith("/etc/") else str(_moved(a, tmp_path)) for a in check[1:]]
        done = subprocess.run(
            [sys.executable, "-m", "presence_sync", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "secret of" not in done.stdout + done.stderr
    else:
        # Until `check` exists: the daemon's own loader, reading relative
        # secret files from the directory --credentials names.
        from presence_sync.config import load

        settings = load(
            _moved(config, tmp_path),
            {"CREDENTIALS_DIRECTORY": str(_moved(credentials_dir, tmp_path))},
        )
        assert settings.nfon.password.get_secret_value() == secrets["nfon-password"]


def test_the_service_sees_what_the_check_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's view: each enabled credential copied to
    $CREDENTIALS_DIRECTORY/NAME; the configuration loads the same secrets."""
    from presence_sync.app import load

    secrets = _build_guide_layout(tmp_path)
    run_dir = tmp_path / "run" / "credentials" / "presence-sync.service"
    run_dir.mkdir(parents=True)
    for name, source in credentials().items():
        shutil.copy(_moved(source, tmp_path), run_dir / name)
        (run_dir / name).chmod(0o400)
    config = shlex.split(unit_value("ExecStart"))[-1]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(run_dir))

    loaded = load(_moved(config, tmp_path))

    assert loaded.settings.nfon.password.get_secret_value() == secrets["nfon-password"]


def test_the_guide_needs_neither_an_editor_variable_nor_a_terminal() -> None:
    lines = guide_install_block()
    assert not any(line.startswith("$EDITOR") for line in lines), "fails when $EDITOR is unset"
    assert not any("systemd-ask-password" in line for line in lines), "hangs without a terminal"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        pytest.param("pa ss\\word\n", "pa ss\\word", id="piped-in"),
        pytest.param("", None, id="nothing-given"),
    ],
)
def test_the_guides_secret_line_works_without_a_terminal(
    tmp_path: Path, typed: str, stored: str | None
) -> None:
    """The guide's command run as written, by bash with no terminal (a new
    session, the password piped in): the file holds exactly the password,
    root-only, and no password means no (empty) file."""
    [line] = [line for line in guide_install_block() if f"> {CREDSTORE}/nfon-password" in line]
    store = tmp_path / "credstore"
    store.mkdir(mode=0o700)
    done = subprocess.run(
        ["bash", "-c", line.replace(CREDSTORE, str(store))],
        input=typed,
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
        check=False,
    )
    secret = store / "nfon-password"
    if stored is None:
        assert not secret.exists()
        return
    assert done.returncode == 0, done.stderr
    assert secret.read_text() == stored
    assert secret.stat().st_mode & 0o777 == 0o600


def test_the_guide_keeps_secrets_root_only() -> None:
    lines = guide_install_block()
    assert f"install -d -m 0700 /etc/credstore {CREDSTORE}" in lines
    writes = [line for line in lines if f"> {CREDSTORE}/" in line]
    assert writes
    assert all(line.startswith("(umask 077;") for line in writes)


# --- as the dynamic user: the modes the guide gives work ---------------------------------

NOBODY = 65534


def _load_as_nobody(config: Path, credentials_dir: Path) -> int:
    """Load ``config`` in a forked child that dropped to an unprivileged
    user, as the service's dynamic user is: 0 when it loads, 78 for a
    configuration error (what ``presence-sync run`` exits with), else 1."""
    from presence_sync.app import load
    from presence_sync.errors import EX_CONFIG, ConfigError

    # Once as root first: every module the loader imports lazily is then in
    # memory (this Python's own files may be out of the other user's reach).
    previous = os.environ.get("CREDENTIALS_DIRECTORY")
    os.environ["CREDENTIALS_DIRECTORY"] = str(credentials_dir)
    try:
        load(config)
    finally:
        if previous is None:
            del os.environ["CREDENTIALS_DIRECTORY"]
        else:
            os.environ["CREDENTIALS_DIRECTORY"] = previous
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.environ["CREDENTIALS_DIRECTORY"] = str(credentials_dir)
            load(config)
            code = 0
        except ConfigError:
            code = EX_CONFIG
        except BaseException as exc:
            print(f"as user {NOBODY}: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.parametrize(
    ("modes", "code"),
    [
        pytest.param("guide", 0, id="as-the-guide-says"),
        pytest.param((0o750, 0o640), 78, id="root-only-as-the-guide-had-it"),
    ],
)
def test_the_dynamic_user_reads_the_guides_configuration(
    modes: str | tuple[int, int], code: int
) -> None:
    if modes == "guide":
        lines = guide_install_block()
        [made] = [line for line in lines if line.endswith(" /etc/presence-sync")]
        [copied] = [
            line
            for line in lines
            if line.startswith("install ") and line.endswith(" /etc/presence-sync/config.yaml")
        ]
        dir_mode, file_mode = int(shlex.split(made)[3], 8), int(shlex.split(copied)[2], 8)
    else:
        assert isinstance(modes, tuple)
        dir_mode, file_mode = modes
    # Not under pytest's tmp_path: its parents are root-only.
    root = Path(tempfile.mkdtemp(prefix="presence-sync-guide-"))
    try:
        root.chmod(0o755)
        (root / "etc").mkdir(mode=0o755)
        _build_guide_layout(root)
        config = _moved("/etc/presence-sync/config.yaml", root)
        config.parent.chmod(dir_mode)
        config.chmod(file_mode)
        # systemd's copy of each credential: the service's own, 0400.
        run_dir = root / "credentials"
        run_dir.mkdir(mode=0o700)
        for name, source in credentials().items():
            shutil.copy(_moved(source, root), run_dir / name)
            (run_dir / name).chmod(0o400)
            os.chown(run_dir / name, NOBODY, NOBODY)
        os.chown(run_dir, NOBODY, NOBODY)

        assert _load_as_nobody(config, run_dir) == code
    finally:
        shutil.rmtree(root)
