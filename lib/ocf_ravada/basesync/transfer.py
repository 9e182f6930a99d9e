"""rsync over ssh from one holder: the only code that touches the network.

Every peer serves its base directory read-only through rsync's `rrsync -ro DIRECTORY` as the
forced command of the key we log in with, so remote paths are relative to that directory and
the key can do nothing else. ssh verifies host keys (StrictHostKeyChecking=yes, BatchMode:
an unknown or changed key fails, it is never accepted).

`--append` is the resumable primitive: it sends only what lies beyond the local file's
length, so an interrupted copy goes on from where it stopped, from the same or another
holder, and a node can follow a copy that is still arriving at its peer. Appending does not
check what is already there: the caller verifies the whole file's SHA-256 before using it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time
from typing import Callable

# Options are passed inside rsync's -e string, which rsync splits on white space.
SAFE_OPTION = re.compile(r"[A-Za-z0-9_./@%+=:,-]+")
POLL = 0.5
CONTROL_PERSIST = 15     # seconds a shared connection outlives its last use
# rsync exit codes that mean "this holder cannot be reached or talked to".
UNREACHABLE_CODES = frozenset({5, 10, 12, 14, 30, 35, 255})


@dataclasses.dataclass(frozen=True)
class SshOptions:
    user: str = "root"
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None
    bwlimit_kib: int = 0       # 0: no limit
    io_timeout: int = 30       # seconds without data before rsync gives up
    # A private directory for ssh connection sharing (ControlMaster): a chain node runs one
    # short rsync after another against its predecessor, and a new ssh handshake for each
    # would add its latency to every hop. None: no sharing.
    control_dir: str | None = None

    def shell(self) -> str:
        """rsync's -e value: ssh that verifies host keys and never asks anything."""
        argv = ["ssh", "-l", self.user, "-p", str(self.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.control_dir:
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                     "-o", f"ControlPersist={CONTROL_PERSIST}"]
        for word in argv:
            if not SAFE_OPTION.fullmatch(word) and word != "ssh":
                raise ValueError(f"unsafe ssh option {word!r}")
        return " ".join(argv)


@dataclasses.dataclass(frozen=True)
class Pulled:
    """The outcome of one rsync run."""

    ok: bool
    missing: bool = False       # the remote file does not exist (or vanished meanwhile)
    unreachable: bool = False   # ssh/rsync could not talk to the holder
    no_space: bool = False      # our side ran out of space
    reason: str = ""


def close_shared(options: SshOptions, host: str) -> None:
    """End the shared connection to `host` (ssh -O exit), so none outlives the worker."""
    if not options.control_dir:
        return
    try:
        subprocess.run(options.shell().split() + ["-O", "exit", host], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def remote_spec(host: str, path: str) -> str:
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


def rsync_argv(options: SshOptions, host: str, remote_path: str, local_path: str,
               append: bool = True, max_size: int | None = None) -> list[str]:
    argv = ["rsync", f"--timeout={options.io_timeout}", "-e", options.shell()]
    if append:
        argv.append("--append")
    if options.bwlimit_kib:
        argv.append(f"--bwlimit={options.bwlimit_kib}")
    if max_size is not None:
        argv.append(f"--max-size={max_size}")
    return argv + ["--", remote_spec(host, remote_path), local_path]


def pull(options: SshOptions, host: str, remote_path: str, local_path: str, *,
         append: bool = True, max_size: int | None = None,
         while_running: Callable[[], None] = lambda: None,
         stop: Callable[[], bool] = lambda: False) -> Pulled:
    """One rsync run; `while_running` is called about every POLL seconds (progress reports),
    `stop` ends the run early (the worker is being stopped)."""
    argv = rsync_argv(options, host, remote_path, local_path, append, max_size)
    # stderr goes to a file, not a pipe: a shared ssh connection's master lives on after
    # rsync and would hold a pipe open.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errors, env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError:
            return Pulled(False, reason="rsync is not installed")
        try:
            while True:
                try:
                    proc.wait(timeout=POLL)
                    break
                except subprocess.TimeoutExpired:
                    if stop():
                        proc.terminate()
                        proc.wait()
                        return Pulled(False, reason="stopped")
                    while_running()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors.seek(0)
        stderr = errors.read(64 * 1024).decode("utf-8", "replace")
    return classify(proc.returncode, stderr)


def classify(returncode: int, stderr: str) -> Pulled:
    detail = " ".join(stderr.split())[-300:]
    if returncode == 0:
        return Pulled(True)
    if "No space left on device" in stderr:
        return Pulled(False, no_space=True, reason=detail)
    # rrsync checks paths itself and ends the connection (exit 12) for a missing one.
    if returncode == 24 or (returncode in (12, 23) and "No such file or directory" in stderr):
        return Pulled(False, missing=True, reason=detail)
    if returncode in UNREACHABLE_CODES:
        return Pulled(False, unreachable=True, reason=detail or f"rsync exit {returncode}")
    return Pulled(False, reason=detail or f"rsync exit {returncode}")


class RateMeter:
    """Bytes per second over the last few seconds, for progress reports."""

    def __init__(self, window: float = 5.0, clock=time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._samples: list[tuple[float, int]] = []

    def add(self, total_bytes: int) -> float:
        now = self._clock()
        self._samples.append((now, total_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.pop(0)
        first_time, first_bytes = self._samples[0]
        elapsed = now - first_time
        return (total_bytes - first_bytes) / elapsed if elapsed > 0 else 0.0
