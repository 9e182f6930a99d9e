"""A libvirt connection whose every call is bounded by the action's deadline."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import libvirt

from .. import bounded
from ..deadline import Deadline, DeadlineExceeded

T = TypeVar("T")

# libvirt prints every error to stderr by default; we report errors ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Longest single wait for one ordinary libvirt call; a healthy libvirtd answers in ms.
CALL_LIMIT = 30.0
CONNECT_LIMIT = 15.0


class LibvirtUnavailable(Exception):
    """libvirtd cannot be reached or does not answer in time."""


def is_no_domain(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def is_not_running(err: libvirt.libvirtError) -> bool:
    """The domain vanished or stopped under us: what stop calls success."""
    return err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


def is_connection_lost(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INTERNAL_ERROR) \
        and err.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)


class Hypervisor:
    """One libvirt connection plus the deadline that bounds everything done through it."""

    def __init__(self, conn: libvirt.virConnect, deadline: Deadline) -> None:
        self.conn = conn
        self.deadline = deadline

    @classmethod
    def connect(cls, uri: str | None, deadline: Deadline) -> "Hypervisor":
        what = f"connecting to libvirt at {uri or 'the default URI'}"
        try:
            conn = bounded.call(what, deadline.bounded(CONNECT_LIMIT), libvirt.open, uri or None)
        except libvirt.libvirtError as err:
            # Pacemaker keeps 128 characters of an exit reason: the cause comes first.
            raise LibvirtUnavailable(f"{err.get_error_message()} ({uri or 'default URI'})") from None
        except DeadlineExceeded as err:
            raise LibvirtUnavailable(f"libvirtd hung: {err}") from None
        if conn is None:
            raise LibvirtUnavailable(f"{what}: no connection")
        return cls(conn, deadline)

    def call(self, what: str, fn: Callable[..., T], *args: Any, limit: float = CALL_LIMIT) -> T:
        """fn(*args), waiting at most `limit` seconds and never past the deadline.

        A timeout means libvirtd is hung: LibvirtUnavailable, like a dead daemon.
        """
        try:
            return bounded.call(what, self.deadline.bounded(limit), fn, *args)
        except DeadlineExceeded as err:
            raise LibvirtUnavailable(f"libvirtd hung: {err}") from None
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise LibvirtUnavailable(f"{what}: {err.get_error_message()}") from None
            raise

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.call(f"looking up domain {name}", self.conn.lookupByName, name)
        except libvirt.libvirtError as err:
            if is_no_domain(err):
                return None
            raise

    @property
    def uri(self) -> str:
        return self.call("reading the connection URI", self.conn.getURI)

    def close(self) -> None:
        try:
            bounded.call("closing the libvirt connection", min(2.0, self.deadline.remaining() or 0.1),
                         self.conn.close)
        except Exception:
            pass  # closing is best effort: the process exits right after
