"""The status page in a real headless Chromium (Debian's ``chromium``, driven
by Playwright; no browser is ever downloaded) against the real daemon, the
NFON simulator and a webhook receiver: a call shows up and goes away without
a reload, and a name from the NFON directory is shown as text, never run."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Daemon, Hook, write_config

from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon

pytestmark = pytest.mark.system

CHROMIUM = "/usr/bin/chromium"
EVIL = "<img src=x onerror=alert(1)>"
CALLER = "4930123456"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)",
        allow_module_level=True,
    )

# Anna's name comes from NFON's directory (none configured): untrusted.
PEOPLE = [("100", None, "anna@example.com"), ("101", "Ben Müller", "ben@example.com")]


@pytest.fixture
def evil_nfon() -> Iterator[SimHandle]:
    sim = NfonSim(extensions=[("100", EVIL), ("101", "Ben Müller")], keepalive=5.0)
    with serve_nfon(sim) as handle:
        yield handle


@pytest.fixture
def browser() -> Iterator[object]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_shows_a_call_live_and_names_as_text(
    tmp_path: Path,
    evil_nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    browser: object,
) -> None:
    config = write_config(tmp_path / "config.yaml", evil_nfon, hook, people=PEOPLE)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    page = browser.new_page()  # type: ignore[attr-defined]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    response = page.goto(daemon.url() + "/")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp
    assert "script-src 'sha256-" in csp
    assert response.headers["x-content-type-options"] == "nosniff"

    expect = sync_api.expect
    anna = page.locator("tr[data-key='anna@example.com']")
    expect(page.locator("#overall")).to_have_text("Ready: following NFON")
    expect(anna.locator(".name")).to_have_text(EVIL)
    expect(anna.locator(".line")).to_have_text("idle")
    expect(page.locator("#targets tbody tr")).to_contain_text("webhook")

    call = evil_nfon.sim.call("100", direction="inbound", party=CALLER)
    hook.wait_status("anna@example.com", "InACall")
    expect(anna.locator(".line")).to_have_text("in-use")
    expect(anna.locator(".direction")).to_have_text("inbound")
    webhook = anna.locator("td[data-target='webhook']")
    expect(webhook.locator(".applied")).to_contain_text("InACall")
    expect(webhook).to_contain_text("in sync")
    assert CALLER not in page.content()
    # One time format on the page, the readiness reasons' (issue 16 point 15).
    shown = (
        "\n".join(page.locator(where).inner_text() for where in ("#health", "#updated"))
        + webhook.inner_text()
    )
    times = re.findall(
        r"(?:\d{4}-\d\d-\d\d[ T])?\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?(?: [+-]\d\d:\d\d)?", shown
    )
    assert len(times) >= 4, shown
    for found in times:
        assert re.fullmatch(r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d[+-]\d\d:\d\d", found), shown

    evil_nfon.sim.hangup(call)
    hook.wait_status("anna@example.com", None)
    expect(anna.locator(".line")).to_have_text("idle")
    expect(anna.locator(".direction")).to_have_text("")
    expect(webhook.locator(".applied")).to_have_text("shows: (their own)")

    # Search and the "not in sync" filter work in the page too.
    page.fill("#q", "müller")
    expect(page.locator("#people tbody tr")).to_have_count(1)
    expect(page.locator("#people tbody tr .name")).to_have_text("Ben Müller")
    page.fill("#q", "")
    expect(page.locator("#people tbody tr")).to_have_count(2)
    page.check("#unsynced")
    expect(page.locator("#people tbody tr")).to_have_count(0)
    expect(page.locator("#range")).to_contain_text("nobody matches")

    # The name was shown as text: no element was made of it, nothing ran.
    assert page.locator("img").count() == 0
    assert dialogs == []
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    assert not [e for e in console_errors if "Content Security Policy" in e]
