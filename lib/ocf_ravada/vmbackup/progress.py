"""Progress of a long copy on a terminal: bytes, rate and ETA, redrawn at most 4 times a second.
Off when stderr is not a terminal (cron, systemd timers): they get the one summary line."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = max(1, total)
        self.stream = stream
        self.enabled = stream.isatty()
        self.began = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.shown < 0.25:
            return
        self.shown = now
        rate = done / max(now - self.began, 1e-6)
        left = max(0, self.total - done)
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and done < self.total else ""
        self.stream.write(f"\r{self.label}: {human(done)} / ~{human(self.total)}  "
                          f"{human(rate)}/s  {eta}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
