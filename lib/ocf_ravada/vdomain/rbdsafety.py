"""The VM agent's side of Ceph RBD safety; lib/ocf_ravada/rbd does the Ceph work.

Only domains with RBD disks pay for any of this: the disk list comes from the domain XML,
and librados is loaded only when there is a disk to check.  The agent hands over what these
functions need as an RbdContext, not itself.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

from ..deadline import Deadline
from ..log import Log
from ..ocf import OcfError, Rc
from ..statefile import StateFile

T = TypeVar("T")


@dataclass(frozen=True)
class RbdContext:
    """What the RBD checks of one agent action use."""
    params: Mapping[str, Any]     # the agent's parameter values (Ceph ones: rbdparams.py)
    node: str                     # this node's name in the cluster
    deadline: Deadline
    log: Log
    state: StateFile              # the resource's state file (disks of the last start)


def guarded_disks(ctx: RbdContext, xml: str) -> list:
    """The domain's RBD disks to protect; [] when there are none or the policy is off."""
    if ctx.params["rbd_lock_policy"] == "off":
        return []
    from ..rbd.disks import disks_from_domain_xml
    from ..rbd.errors import RbdError

    try:
        return [d for d in disks_from_domain_xml(xml) if d.guarded]
    except RbdError as err:
        raise OcfError(Rc.ERR_CONFIGURED, f"RBD disk definition: {err.reason}") from None


@contextlib.contextmanager
def _guard(ctx: RbdContext) -> Iterator:
    from ..rbd.errors import RbdError
    from .rbdparams import exit_code, open_guard

    try:
        guard = open_guard(ctx.params, ctx.node, ctx.deadline, log=ctx.log.info, warn=ctx.log.warning)
    except RbdError as err:
        raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None
    with guard:
        try:
            yield guard
        except RbdError as err:
            raise OcfError(exit_code(err), f"Ceph: {err.reason}") from None


def start_exclusively(ctx: RbdContext, disks: list, start: Callable[[], T]) -> T:
    """start() only once no other client can write the disks; every client that still might
    (stale lock owner, recorded owner, a watcher seen while waiting) is cut off (blocklisted)
    first, and this node is recorded as the disks' owner, with its QEMU's address once known."""
    if not disks:
        return start()
    # stop finds the disks here even when the domain is gone and the config unreadable
    ctx.state.update(rbd_disks=[d.spec for d in disks])
    with _guard(ctx) as guard:
        result = guard.before_start(disks, ctx.deadline)
        if not result.allowed:
            raise OcfError(Rc.ERR_GENERIC, result.reason)
        if result.actions:
            ctx.log.warning(f"RBD recovery before start: {result.reason}")
        try:
            started = start()
        except BaseException:
            guard.after_start(disks, started=False)
            raise
        guard.after_start(disks)
        return started


def recorded_disks(ctx: RbdContext) -> list:
    """The RBD disks the last start on this node guarded (from the state file)."""
    from ..rbd.disks import RbdDisk

    return [RbdDisk.from_spec(spec) for spec in ctx.state.load().get("rbd_disks") or []]


def migrating(ctx: RbdContext, disks: list, target: str, migrate: Callable[[], T]) -> T:
    """migrate() with the owner records naming `target` as incoming while it runs, handed over
    to it when it succeeded and taken back when it failed."""
    if not disks:
        return migrate()
    with _guard(ctx) as guard:
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


def check_arrival(ctx: RbdContext, disks: list, source: str) -> None:
    """After an incoming migration: only we and the migration source may hold the disks; then
    this node is their recorded owner."""
    if not disks:
        return
    ctx.state.update(rbd_disks=[d.spec for d in disks])
    with _guard(ctx) as guard:
        result = guard.before_start(disks, ctx.deadline, migration_partner=source)
        if result.allowed:
            result = guard.arrived(disks, source)
    if not result.allowed:
        raise OcfError(Rc.ERR_GENERIC, result.reason)


def _advisory(ctx: RbdContext, what: str, ask: Callable[[object], T]) -> T | None:
    """ask(guard), or None with a warning when Ceph cannot answer: for checks whose failure
    says nothing about the VM itself."""
    try:
        with _guard(ctx) as guard:
            return ask(guard)
    except OcfError as err:
        ctx.log.warning(f"{what}: {err.reason}")
        return None


def check_running(ctx: RbdContext, disks: list) -> None:
    """Monitor: another node's client on our running VM's disks is a split brain."""
    if not disks:
        return
    # Ceph unreachable says nothing about this VM; restarting it elsewhere would not help.
    check = _advisory(ctx, "RBD disks not checked", lambda guard: guard.check_running(disks))
    if check is not None and not check.ok:
        ctx.log.error(f"{check.reason} — failing the monitor so Pacemaker recovers")
        raise OcfError(Rc.ERR_GENERIC, check.reason)


def after_stop(ctx: RbdContext, disks: list) -> None:
    """The VM is down: make sure nothing of this node still holds its disks, and take this node
    out of their owner records."""
    if not disks:
        return
    # libvirt confirmed QEMU is gone; a blocklist we could not add does not change that.
    result = _advisory(ctx, "RBD clean-up after stop incomplete",
                       lambda guard: guard.after_stop(disks, ctx.deadline))
    if result is None:
        return
    if result.actions:
        ctx.log.warning(f"RBD clean-up after stop: {result.reason}")
    ctx.state.update(rbd_disks=[])
