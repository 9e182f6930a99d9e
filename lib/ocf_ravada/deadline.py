"""The time an action has left, from Pacemaker's operation timeout."""
from __future__ import annotations

import math
import time


class DeadlineExceeded(Exception):
    """Raised by bounded operations that ran out of time."""


class Deadline:
    """A point in monotonic time; every wait and every libvirt call is measured against it.

    A small margin is kept back from Pacemaker's timeout so the agent can still print its
    exit reason and exit before pacemaker-execd kills it.
    """

    def __init__(self, seconds: float, clock=time.monotonic) -> None:
        self._clock = clock
        self.total = seconds
        self._end = clock() + seconds

    @classmethod
    def from_timeout_ms(cls, timeout_ms: int | None, default_s: float, clock=time.monotonic) -> "Deadline":
        total = timeout_ms / 1000.0 if timeout_ms else default_s
        # Keep 5 % (between 0.5 s and 2 s) for exit processing.
        margin = min(2.0, max(0.5, total * 0.05))
        return cls(max(0.1, total - margin), clock)

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def earlier_by(self, seconds: float) -> "Deadline":
        """A deadline `seconds` before this one (never before now)."""
        child = Deadline(0.0, self._clock)
        child.total = self.total
        child._end = max(self._clock(), self._end - seconds)
        return child

    def bounded(self, wanted: float) -> float:
        """`wanted` seconds, or what is left if that is less."""
        return min(wanted, self.remaining())

    def sleep(self, seconds: float) -> None:
        time.sleep(self.bounded(seconds))

    def pause(self, seconds: float) -> bool:
        """Sleep between two polls; False (without sleeping) when too little time would be
        left afterwards for another poll, so loops end with their own reason."""
        if self.remaining() < seconds + 0.5:
            return False
        time.sleep(seconds)
        return True


def parse_seconds(text: str, what: str, maximum: float = 86400.0) -> float:
    """A timeout given as text: a finite number of seconds > 0 and <= maximum; ValueError
    (with a one-line message naming `what`) for anything else, inf and nan included."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise ValueError(f"{what} must be a number of seconds > 0 and <= {maximum:.0f}, got {text!r}")
    return value
