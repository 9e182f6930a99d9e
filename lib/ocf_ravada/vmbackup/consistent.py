"""A VM's snapshot taken consistently: freeze the guest's file systems through the QEMU guest
agent, snapshot every RBD image inside the freeze, thaw.

The thaw is guaranteed as far as software can: it runs in a `finally` with the termination
signals held back, it is retried until the deadline while libvirt still waits for a slow
freeze, and a guest found frozen at the start (an earlier run killed with SIGKILL, a host
crash) is thawed first.  When the thaw cannot be confirmed the error says so and how to fix it.
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ..deadline import Deadline
from ..rbd.errors import RbdError
from ..rbd.snapshot import Snapshots
from ..virt.connection import VirtError
from ..virt.guestagent import Agent, GuestAgent
from .locate import Vm

CRASH_CONSISTENT = "crash-consistent"
FROZEN = "file systems frozen"
STOPPED = "VM not running"
# Time kept back from the deadline for the thaw (libvirt may first wait for a slow freeze).
THAW_RESERVE = 10.0
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class SnapshotFailed(RbdError):
    """No snapshot was taken; `reason` says why (the guest was thawed unless it says otherwise)."""


@dataclass
class Outcome:
    name: str
    consistency: str                          # FROZEN, CRASH_CONSISTENT or STOPPED
    frozen_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@contextmanager
def signals_held() -> Iterator[None]:
    """Termination signals wait until the block is done (they are delivered afterwards)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def thaw_if_frozen(agent: GuestAgent, deadline: Deadline) -> bool:
    """Thaw a guest left frozen (by an interrupted run); True when it was frozen."""
    if not agent.frozen():
        return False
    agent.thaw(deadline)
    return True


def snapshot_vm(vm: Vm, snapshots: Snapshots, name: str, deadline: Deadline,
                freeze_limit: float = 10.0, require_freeze: bool = False) -> Outcome:
    """Snapshot all of `vm`'s images as `name`, frozen when the guest has an agent."""
    if not vm.running:
        snapshots.create(vm.disks, name)
        return Outcome(name, STOPPED)
    agent = GuestAgent(vm.hv, vm.domain)
    state = agent.state()
    if state is not Agent.CONNECTED:
        if require_freeze:
            raise SnapshotFailed(f"{vm.name}: {state.value}; refusing a crash-consistent snapshot")
        snapshots.create(vm.disks, name)
        return Outcome(name, CRASH_CONSISTENT,
                       warnings=[f"{vm.name}: {state.value}: the snapshot is only crash-consistent"])
    outcome = Outcome(name, FROZEN)
    try:
        if thaw_if_frozen(agent, deadline):
            outcome.warnings.append(f"{vm.name} was left frozen (by an interrupted run?): thawed it")
    except VirtError as err:
        raise SnapshotFailed(f"{vm.name} is frozen and could not be thawed: {err.reason}") from None
    began = time.monotonic()
    try:
        try:
            agent.freeze(min(freeze_limit, deadline.remaining() - THAW_RESERVE))
        except VirtError as err:
            raise SnapshotFailed(f"freezing {vm.name} failed: {err.reason}") from None
        snapshots.create(vm.disks, name)
    finally:
        with signals_held():
            try:
                agent.thaw(deadline)
                still = agent.frozen()
            except VirtError as err:
                raise SnapshotFailed(f"{vm.name} MAY BE LEFT FROZEN: {err.reason}; run "
                                     f"'ravada-snapshot thaw {vm.name}'") from None
            if still:
                raise SnapshotFailed(f"{vm.name} is STILL FROZEN after the thaw; run "
                                     f"'ravada-snapshot thaw {vm.name}'")
            outcome.frozen_seconds = time.monotonic() - began
    return outcome
