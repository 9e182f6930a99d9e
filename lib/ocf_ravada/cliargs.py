"""What the admin commands share in parsing their command lines: argparse's complaints become
one exception (printed on one line, exit code 2 by each command) instead of argparse's own
exit, and timeouts are finite numbers of seconds within bounds (inf and nan refused)."""
from __future__ import annotations

import argparse
from typing import Callable

from .deadline import parse_seconds


class UsageError(Exception):
    """A bad command line, with argparse's message."""


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError: the command decides how to report it and exits 2."""

    def error(self, message: str):
        raise UsageError(message)


def seconds(what: str, maximum: float = 86400.0, minimum: float = 0.0) -> Callable[[str], float]:
    """An argparse `type` for a number of seconds in (0, maximum], and >= minimum."""
    def parse(text: str) -> float:
        try:
            value = parse_seconds(text, what, maximum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum:.0f} seconds, got {text!r}")
        return value
    return parse
