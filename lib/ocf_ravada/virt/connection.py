"""A libvirt connection whose every call is bounded by the action's deadline.

libvirt's own exception never leaves this module: `Hypervisor.call` turns every
libvirtError into one of our errors, so callers (and the agent dispatcher) know what
happened without decoding libvirt's error codes:

    VirtError(reason, code)   base class; `code` is libvirt's error number (None: a timeout)
      LibvirtUnavailable      libvirtd cannot be reached, lost the connection, or hung
      DomainGone              the domain does not exist (any more)
      LibvirtBusy             libvirt is busy with the domain (state change lock, job): retry
      LibvirtFailed           anything else: the operation was refused or failed
"""
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

_GONE_CODES = frozenset({libvirt.VIR_ERR_NO_DOMAIN})
# "Requested operation is not valid: domain is not running" and its kin.
_NOT_RUNNING_CODES = frozenset({libvirt.VIR_ERR_OPERATION_INVALID})
# "Timed out during operation: cannot acquire state change lock", a job in progress, an agent
# that is busy: the same call may succeed a moment later.
_BUSY_CODES = frozenset({libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                         libvirt.VIR_ERR_RESOURCE_BUSY})


class VirtError(Exception):
    """A libvirt operation did not succeed; `reason` is one line for an exit reason."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class LibvirtUnavailable(VirtError):
    """libvirtd cannot be reached or does not answer in time."""


class DomainGone(VirtError):
    """The domain is not defined (any more)."""


class LibvirtBusy(VirtError):
    """libvirt is busy with the domain; retrying later may succeed."""


class LibvirtFailed(VirtError):
    """libvirt refused or failed the operation."""


def _is_connection_lost(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INTERNAL_ERROR) \
        and err.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)


def typed(what: str, err: libvirt.libvirtError) -> VirtError:
    """Our error for a libvirtError raised while doing `what`."""
    code = err.get_error_code()
    message = " ".join((err.get_error_message() or str(err) or "unknown libvirt error").split())
    reason = f"{what}: {message}"
    if _is_connection_lost(err):
        return LibvirtUnavailable(reason, code)
    if code in _GONE_CODES:
        return DomainGone(reason, code)
    if code in _BUSY_CODES:
        return LibvirtBusy(reason, code)
    return LibvirtFailed(reason, code)


def is_not_running(err: VirtError) -> bool:
    """The domain vanished or stopped under us: what stop calls success."""
    return isinstance(err, DomainGone) or err.code in _NOT_RUNNING_CODES


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
            raise LibvirtUnavailable(f"{err.get_error_message()} ({uri or 'default URI'})",
                                     err.get_error_code()) from None
        except DeadlineExceeded as err:
            raise LibvirtUnavailable(f"libvirtd hung: {err}") from None
        if conn is None:
            raise LibvirtUnavailable(f"{what}: no connection")
        return cls(conn, deadline)

    def call(self, what: str, fn: Callable[..., T], *args: Any, limit: float = CALL_LIMIT) -> T:
        """fn(*args), waiting at most `limit` seconds and never past the deadline.

        A timeout means libvirtd is hung: LibvirtUnavailable, like a dead daemon. Every
        libvirtError comes out as one of this module's VirtError subclasses.
        """
        try:
            return bounded.call(what, self.deadline.bounded(limit), fn, *args)
        except DeadlineExceeded as err:
            raise LibvirtUnavailable(f"libvirtd hung: {err}") from None
        except libvirt.libvirtError as err:
            raise typed(what, err) from None

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.call(f"looking up domain {name}", self.conn.lookupByName, name)
        except DomainGone:
            return None

    @property
    def uri(self) -> str:
        return self.call("reading the connection URI", self.conn.getURI)

    def close(self) -> None:
        try:
            bounded.call("closing the libvirt connection", min(2.0, self.deadline.remaining() or 0.1),
                         self.conn.close)
        except Exception:
            pass  # closing is best effort: the process exits right after
