"""Free space in the base directory, against the `reserve` the admin keeps."""
from __future__ import annotations

import os

MIB = 1024 * 1024


class NoSpace(Exception):
    """Fetching would leave less than the reserve free; the message says how much is missing."""


def free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check(directory: str, needed: int, reserve_mib: int, what: str) -> None:
    """Raise NoSpace unless `needed` more bytes fit in `directory` with reserve_mib MiB left."""
    free = free_bytes(directory)
    reserve = reserve_mib * MIB
    if free - needed < reserve:
        raise NoSpace(f"not enough space in {directory} for {what}: needs {_mib(needed)} MiB, "
                      f"{_mib(free)} MiB free, reserve {reserve_mib} MiB")


def _mib(value: int) -> str:
    return f"{value / MIB:.0f}" if value >= MIB else f"{value / MIB:.2f}"
