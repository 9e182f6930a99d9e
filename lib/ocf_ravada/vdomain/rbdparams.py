"""The VM agent's Ceph parameters, how they become a guard, and how the guard's errors become
OCF exit codes (see doc/rbd.md): the Ceph package (ocf_ravada.rbd) knows nothing of OCF.

The agent appends RBD_PARAMETERS to its own parameter list and calls open_guard() only when the
domain has guarded RBD disks, so VMs without Ceph never touch a Ceph client.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from ..ocf import Rc
from ..params import Parameter
from ..rbd.errors import BadDiskSpec, CephConfigMissing, RbdError

# The values of guard.Policy, spelled out so that declaring the parameters (every agent run)
# does not load librados; a unit test keeps the two in step.
POLICIES = ("off", "check", "recover")

CONNECT_TIMEOUT = 10.0


def _absolute_path(value: str) -> str | None:
    return None if os.path.isabs(value) else "must be an absolute path"


def _ip_list(value: str) -> str | None:
    import ipaddress  # only when the parameter is set

    try:
        for part in value.replace(",", " ").split():
            ipaddress.ip_address(part)
    except ValueError as exc:
        return str(exc)
    return None


P = Parameter
RBD_PARAMETERS: tuple[Parameter, ...] = (
    P("ceph_conf", "Ceph configuration file",
      "Ceph configuration the agent's own client reads (monitors, cephx settings) to check "
      "the domain's RBD disks.", default="/etc/ceph/ceph.conf", check=_absolute_path),
    P("ceph_id", "cephx user for the RBD checks",
      "cephx user name without 'client.'. It needs mon 'profile rbd' (to blocklist dead "
      "owners) and osd 'profile rbd pool=...' on the VMs' pools.", default="admin"),
    P("ceph_keyring", "Keyring of ceph_id",
      "Keyring file of ceph_id. Default: what ceph_conf says "
      "(/etc/ceph/ceph.client.<id>.keyring).", check=_absolute_path),
    P("rbd_lock_policy", "RBD lock safety",
      "off: do not look at Ceph. check: refuse to start while any other client has one of "
      "the domain's RBD images open, or may still write it unfenced. recover: also cut off "
      "(blocklist) exactly the clients that may still write -- the recorded owner, stale lock "
      "owners -- and clear their stale locks (default).",
      type="select", options=POLICIES, default="recover"),
    P("rbd_watch_only_ips", "Hosts that only watch RBD images",
      "Space or comma separated IPs of hosts whose Ceph clients only watch images "
      "(rbd-mirror, backup agents): their watches neither block a start nor count as split "
      "brain; a lock they hold still does.", default="", check=_ip_list),
)


def open_guard(values: Mapping[str, Any], local_node: str, deadline,
               log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None):
    """A connected guard (RbdGuard) for the agent's parameter values, or None with
    rbd_lock_policy=off. The connection is bounded by min(10 s, a third of what the deadline
    has left); `log` receives the guard's notable steps (its waits), `warn` a keyring that
    others can read and a CIB that does not answer (no node names then)."""
    from ..rbd.guard import Policy, RbdGuard
    from ..rbd.nodes import NodeMap

    policy = Policy.parse(values["rbd_lock_policy"])
    if policy is Policy.OFF:
        return None
    keyring = values["ceph_keyring"] or None
    if keyring and warn and _readable_by_others(keyring):
        warn(f"keyring {keyring} is readable by other users than its owner: chmod 0600 it")
    timeout = max(1.0, min(CONNECT_TIMEOUT, deadline.remaining() / 3))
    return RbdGuard.open(values["ceph_conf"], values["ceph_id"], keyring,
                         timeout=timeout, policy=policy, local_node=local_node, log=log,
                         node_map=NodeMap.from_cib(timeout=timeout, warn=warn),
                         watch_only_ips=(values["rbd_watch_only_ips"] or "").replace(",", " ").split())


def _readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False          # missing: CephSession says so


def exit_code(exc: RbdError) -> Rc:
    """OCF exit code for a guard error: a file missing on this node bans only this node, a
    malformed disk is a configuration error, everything else is a generic (retryable) error."""
    if isinstance(exc, CephConfigMissing):
        return Rc.ERR_INSTALLED
    if isinstance(exc, BadDiskSpec):
        return Rc.ERR_CONFIGURED
    return Rc.ERR_GENERIC
