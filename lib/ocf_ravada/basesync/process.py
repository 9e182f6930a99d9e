"""The worker process: started detached, known by PID *and* start time, stopped by them.

A PID alone may be reused after a reboot or a crash; /proc/PID/stat's start time (in clock
ticks since boot) makes the pair unique, so stop never signals a stranger's process. The
worker leads its own session and process group: stopping it also stops the rsync and ssh it
runs, and nothing else.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..deadline import Deadline

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    try:
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def alive(pid: int, ticks: int) -> bool:
    """The recorded worker still runs (not a zombie, not another process with its PID)."""
    if start_ticks(pid) != ticks:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
        return raw[raw.rindex(b")") + 2:raw.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return False


def spawn(config_path: str, log_path: str) -> tuple[int, int]:
    """Start `python3 -m ocf_ravada.basesync.worker CONFIG` detached; its (pid, start ticks)."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
        proc = subprocess.Popen([sys.executable, "-m", "ocf_ravada.basesync.worker", config_path],
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd="/",
                                env=env, start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise OSError(f"worker {proc.pid} exited at once (see {log_path})")
    return proc.pid, ticks


def signal_worker(pid: int, ticks: int, signum: int) -> bool:
    if not alive(pid, ticks):
        return False
    os.kill(pid, signum)
    return True


def stop(pid: int, ticks: int, deadline: Deadline) -> bool:
    """SIGTERM the worker's process group, SIGKILL it when time runs short; True once gone."""
    if not alive(pid, ticks):
        return True
    os.killpg(pid, signal.SIGTERM)
    while alive(pid, ticks):
        if not deadline.pause(0.2) or deadline.remaining() < 2.0:
            os.killpg(pid, signal.SIGKILL)
            Deadline(1.5).sleep(1.0)
            break
    _reap(pid)
    try:
        os.killpg(pid, signal.SIGKILL)   # its rsync/ssh, if any outlived it
    except ProcessLookupError:
        pass
    return not alive(pid, ticks)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
