"""Processes of a lab node, found by namespace membership (never by name)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NamespaceIds:
    """Inode numbers of a node's namespaces, as seen in /proc/PID/ns/*."""

    net: int
    pid: int

    @classmethod
    def of(cls, pid: int) -> "NamespaceIds":
        return cls(_ns_inode(pid, "net"), _ns_inode(pid, "pid"))


def _ns_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def members(ns: NamespaceIds) -> list[int]:
    """Every live process inside the node's net or pid namespace (zombies excluded)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if _ns_inode(pid, "net") != ns.net and _ns_inode(pid, "pid") != ns.pid:
                continue
            if process_state(pid) in ("Z", "X", None):
                continue
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found.append(pid)
    return found


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (R, S, T, Z, ...), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_all(ns: NamespaceIds, spare: frozenset[int] = frozenset()) -> int:
    """SIGSTOP every member but `spare`, again and again until a pass finds none running
    (forks race us)."""
    stopped: set[int] = set()
    for _ in range(20):
        running = [p for p in members(ns)
                   if p not in spare and process_state(p) not in ("T", "t")]
        if not running:
            return len(stopped)
        signal_all(running, signal.SIGSTOP)
        stopped.update(running)
        time.sleep(0.02)
    return len(stopped)


def continue_all(ns: NamespaceIds) -> None:
    signal_all(members(ns), signal.SIGCONT)


def wait_gone(ns: NamespaceIds, timeout: float) -> list[int]:
    """Wait until the namespace has no process left; return the survivors at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = members(ns)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def host_pid(ns: NamespaceIds, ns_pid: int) -> int | None:
    """Map a PID as seen inside the node's pid namespace to the host's PID (NSpid)."""
    for pid in members(ns):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                return pid
    return None


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return "?"
