"""Small per-resource state kept in HA_RSCTMP (a tmpfs: it is gone after a reboot).

Used for what must survive between actions on one node but is cheap to lose: the domain
identity learnt at start (so stop and probes work when the config file is unreadable) and
the utilization last written to the CIB (so monitors write only on change).

What the file says decides which domain stop shuts down, so it is trusted only when it is
ours: a regular file (never followed through a symlink) owned by this user and writable by
no one else, in a directory that is not a symlink, owned by us or root, and not writable by
others. Anything else reads as "no state"; writing there is refused (exit 4).
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any

from .ocf import OcfError, Rc

# Larger than any state we write (an identity and a few numbers).
MAX_BYTES = 1024 * 1024


class UnsafeState(OcfError):
    def __init__(self, reason: str) -> None:
        super().__init__(Rc.ERR_PERM, reason)


def _unsafe_directory(directory: str) -> str | None:
    try:
        st = os.lstat(directory)
    except OSError as err:
        return f"state directory {directory}: {err.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"state directory {directory} is not a directory (a symlink?)"
    if st.st_uid not in (os.geteuid(), 0):
        return f"state directory {directory} belongs to uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"state directory {directory} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _unsafe_file(st: os.stat_result, path: str) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"state file {path} is not a regular file"
    if st.st_uid != os.geteuid():
        return f"state file {path} belongs to uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"state file {path} is writable by others"
    return None


class StateFile:
    def __init__(self, directory: str, agent: str, resource: str) -> None:
        # A resource id never has "/" (an XML ID); a hand-made one must not leave the directory.
        safe = resource.replace("/", "%2F").replace("\0", "")
        self.path = os.path.join(directory, f"{agent}-{safe}.state")
        self._data: dict[str, Any] | None = None  # read once per action; Pacemaker never
        # runs two actions of one resource on one node at the same time

    def load(self) -> dict[str, Any]:
        if self._data is None:
            data = self._read()
            self._data = data if isinstance(data, dict) else {}
        return dict(self._data)

    def _read(self) -> Any:
        if _unsafe_directory(os.path.dirname(self.path)):
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return {}   # missing, or a symlink (ELOOP)
        try:
            if _unsafe_file(os.fstat(fd), self.path):
                return {}
            raw = os.read(fd, MAX_BYTES + 1)
        except OSError:
            return {}
        finally:
            os.close(fd)
        try:
            return json.loads(raw.decode("utf-8")) if len(raw) <= MAX_BYTES else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            return {}

    def save(self, data: dict[str, Any]) -> None:
        """Atomic replace, so a concurrent reader never sees half a file."""
        import tempfile  # writes are rare; monitors only read

        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        problem = _unsafe_directory(directory)
        if problem:
            raise UnsafeState(f"not writing state: {problem}")
        # mkstemp: a new 0600 file (O_EXCL); rename replaces a symlink, never follows it.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._data = dict(data)

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.load()
        data.update(changes)
        self.save(data)
        return data

    def remove(self) -> None:
        self._data = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
