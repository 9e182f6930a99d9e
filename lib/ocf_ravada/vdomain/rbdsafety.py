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
        guard = open_guard(agent.params, local_node(agent), agent.deadline, log=agent.log.info)
    except RbdError as err:
        raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None
    with guard:
        try:
            yield guard
        except RbdError as err:
            raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None


def start_exclusively(agent, disks: list, start: Callable[[], T]) -> T:
    """start() only once no other client can write the disks; every client that still might
    (stale lock owner, recorded owner, a watcher seen while waiting) is cut off (blocklisted)
    first, and this node is recorded as the disks' owner, with its QEMU's address once known."""
    if not disks:
        return start()
    # stop finds the disks here even when the domain is gone and the config unreadable
    agent.state.update(rbd_disks=[d.spec for d in disks])
    with _guard(agent) as guard:
        result = guard.before_start(disks, agent.deadline)
        if not result.allowed:
            raise OcfError(Rc.ERR_GENERIC, result.reason)
        if result.actions:
            agent.log.warning(f"RBD recovery before start: {result.reason}")
        try:
            started = start()
        except BaseException:
            guard.after_start(disks, started=False)
            raise
        guard.after_start(disks)
        return started


def recorded_disks(agent) -> list:
    """The RBD disks the last start on this node guarded (from the state file)."""
    from ..rbd.disks import RbdDisk

    return [RbdDisk.from_spec(spec) for spec in agent.state.load().get("rbd_disks") or []]


def migrating(agent, disks: list, target: str, migrate: Callable[[], T]) -> T:
    """migrate() with the owner records naming `target` as incoming while it runs, handed over
    to it when it succeeded and taken back when it failed."""
    if not disks:
        return migrate()
    with _guard(agent) as guard:
        result = guard.begin_migration(disks, target)
        if not result.allowed:
            raise OcfError(Rc.ERR_GENERIC, result.reason)
        try:
            done = migrate()
        except BaseException:
            guard.end_migration(disks, target, succeeded=False)
            raise
        guard.end_migration(disks, target, succeeded=True)
        return done


def check_arrival(agent, disks: list, source: str) -> None:
    """After an incoming migration: only we and the migration source may hold the disks; then
    this node is their recorded owner."""
    if not disks:
        return
    agent.state.update(rbd_disks=[d.spec for d in disks])
    with _guard(agent) as guard:
        result = guard.before_start(disks, agent.deadline, migration_partner=source)
        if result.allowed:
            result = guard.arrived(disks, source)
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
    """The VM is down: make sure nothing of this node still holds its disks, and take this node
    out of their owner records."""
    if not disks:
        return
    # libvirt confirmed QEMU is gone; a blocklist we could not add does not change that.
    result = _advisory(agent, "RBD clean-up after stop incomplete",
                       lambda guard: guard.after_stop(disks, agent.deadline))
    if result is None:
        return
    if result.actions:
        agent.log.warning(f"RBD clean-up after stop: {result.reason}")
    agent.state.update(rbd_disks=[])
