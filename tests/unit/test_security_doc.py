"""docs/security.md backs each claim with tests: every ``file::test`` it
names exists, so a renamed or removed test cannot leave a claim unbacked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"


def test_every_test_the_security_page_names_exists() -> None:
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", DOC.read_text()))
    assert len(named) > 20
    missing = [
        f"{path}::{name}"
        for path, name in sorted(named)
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert missing == []


def test_the_readme_links_the_security_page() -> None:
    assert "docs/security.md" in (ROOT / "README.md").read_text()
