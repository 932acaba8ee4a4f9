"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pgcluster import Cluster


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs a command in-process (``cli.main(["run", ...])``)
    lets it configure the root logger as the daemon does; the next test must
    not inherit that handler (its stream is closed by then) or its level."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster (``pgcluster``), started the first time
    a test of this process asks for one: one per xdist worker, a few seconds
    each. Fails, with what to install, when PostgreSQL is missing."""
    cluster = Cluster()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """The URL of a new, empty database of its own for this test (role
    ``pgcluster.ROLE``; its password is ``pgcluster.ROLE_PASSWORD``)."""
    return postgres.database()
