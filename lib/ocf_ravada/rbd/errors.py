"""Exceptions of the RBD safety library.

Every error carries a one-line `reason` fit for `ocf-exit-reason:`.  A refusal because a disk is
in use is not an error: it is a GuardResult with allowed=False.
"""
from __future__ import annotations


class RbdError(Exception):
    """Base class: something prevented a safe decision.  The caller must not start the VM."""

    @property
    def reason(self) -> str:
        return str(self)


class CephConfigMissing(RbdError):
    """The Ceph configuration or keyring file named by a parameter does not exist."""


class CephUnreachable(RbdError):
    """No answer from the cluster within the time allowed (monitors down, network cut)."""


class CephAuthError(RbdError):
    """cephx rejected us: wrong id, keyring or key."""


class MissingCaps(RbdError):
    """Our cephx user lacks a capability (typically mon 'profile rbd' for 'osd blocklist add').
    Raised before anything was changed for the operation that needed it."""


class ImageMissing(RbdError):
    """The pool, namespace or image named by the domain does not exist."""


class BadDiskSpec(RbdError):
    """A disk definition or POOL/IMAGE argument that cannot be understood."""
