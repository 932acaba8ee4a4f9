"""Checked command-line values shared by the simulator commands and the demo:
argparse ``type=`` functions, so a bad value is a usage message (exit 2)
naming the option, never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["not_negative", "port", "positive", "whole"]


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number from ``low`` (to ``high``, when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}: {text!r}")
        return value

    return parse


_port = whole(0, 65535)


def port(text: str) -> int:
    """A TCP port; 0 picks any free one."""
    try:
        return _port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def positive(text: str) -> float:
    """A number above zero (seconds, a rate)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def not_negative(text: str) -> float:
    """A number from zero up (0 usually means "none" or "never")."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value
