"""The VM agent's side of Ceph RBD safety; lib/ocf_ravada/rbd does the Ceph work.

Only domains with RBD disks pay for any of this: the disk list comes from the domain XML,
and librados is loaded only when there is a disk to check.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, TypeVar

from ..ocf import OcfError, Rc

T = TypeVar("T")


def local_node(agent) -> str:
    return agent.env.meta("on_node") or os.uname().nodename


def guarded_disks(agent, xml: str) -> list:
    """The domain's RBD disks to protect; [] when there are none or the policy is off."""
    if agent.params["rbd_lock_policy"] == "off":
        return []
    from ..rbd.disks import disks_from_domain_xml
    from ..rbd.errors import RbdError

    try:
        return [d for d in disks_from_domain_xml(xml) if d.guarded]
    except RbdError as err:
        raise OcfError(Rc.ERR_CONFIGURED, f"RBD disk definition: {err.reason}") from None


@contextlib.contextmanager
def _guard(agent) -> Iterator:
    from ..rbd.agent_params import exit_code, open_guard
    from ..rbd.errors import RbdError

    try:
        guard = open_guard(agent.params, local_node(agent), agent.deadline)
    except RbdError as err:
        raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None
    with guard:
        try:
            yield guard
        except RbdError as err:
            raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None


def start_exclusively(agent, disks: list, start: Callable[[], T]) -> T:
    """start() only once no other client can write the disks; stale owners are cut off
    (blocklisted) before their locks are broken, never the other way round."""
    if not disks:
        return start()
    with _guard(agent) as guard:
        result = guard.before_start(disks, agent.deadline)
        if not result.allowed:
            raise OcfError(Rc.ERR_GENERIC, result.reason)
        if result.actions:
            agent.log.warning(f"RBD recovery before start: {result.reason}")
        try:
            return start()
        finally:
            guard.after_start(disks)


def check_arrival(agent, disks: list, source: str) -> None:
    """After an incoming migration: only we and the migration source may hold the disks."""
    if not disks:
        return
    with _guard(agent) as guard:
        result = guard.before_start(disks, agent.deadline, migration_partner=source)
    if not result.allowed:
        raise OcfError(Rc.ERR_GENERIC, result.reason)


def _advisory(agent, what: str, ask: Callable[[object], T]) -> T | None:
    """ask(guard), or None with a warning when Ceph cannot answer: for checks whose failure
    says nothing about the VM itself."""
    try:
        with _guard(agent) as guard:
            return ask(guard)
    except OcfError as err:
        agent.log.warning(f"{what}: {err.reason}")
        return None


def check_running(agent, disks: list) -> None:
    """Monitor: another node's client on our running VM's disks is a split brain."""
    if not disks:
        return
    # Ceph unreachable says nothing about this VM; restarting it elsewhere would not help.
    check = _advisory(agent, "RBD disks not checked", lambda guard: guard.check_running(disks))
    if check is not None and not check.ok:
        agent.log.error(f"{check.reason} — failing the monitor so Pacemaker recovers")
        raise OcfError(Rc.ERR_GENERIC, check.reason)


def after_stop(agent, disks: list) -> None:
    """The VM is down: make sure nothing of this node still holds its disks."""
    if not disks:
        return
    # libvirt confirmed QEMU is gone; a blocklist we could not add does not change that.
    result = _advisory(agent, "RBD clean-up after stop incomplete",
                       lambda guard: guard.after_stop(disks, agent.deadline))
    if result is not None and result.actions:
        agent.log.warning(f"RBD clean-up after stop: {result.reason}")
