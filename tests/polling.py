"""Waiting for a result the way tests here must: re-check a condition every
few milliseconds until it holds, and fail at a deadline. Never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

INTERVAL = 0.005


def eventually(check: Callable[[], T], what: str = "", within: float = 10.0) -> T:
    """The first truthy result of ``check``; fails the test after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what or check}")
        time.sleep(INTERVAL)


async def eventually_async(check: Callable[[], T], what: str = "", within: float = 10.0) -> T:
    """``eventually`` for async tests: the event loop keeps running meanwhile."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what or check}")
        await asyncio.sleep(INTERVAL)
