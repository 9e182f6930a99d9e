"""Stopping a domain: graceful shutdown in the chosen modes, then destroy within a reserve.

Stop must either leave nothing running or fail (Pacemaker then fences the node); it must
never report success while QEMU still runs.
"""
from __future__ import annotations

import os
import signal
import time

import libvirt

from ..deadline import Deadline
from ..log import Log
from ..ocf import OcfError, Rc
from ..virt.connection import Hypervisor, LibvirtUnavailable, VirtError, is_not_running
from .config import Identity

SHUTDOWN_FLAGS = {
    "acpi": libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
    "agent": libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
    "initctl": libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL,
    "signal": libvirt.VIR_DOMAIN_SHUTDOWN_SIGNAL,
    "paravirt": libvirt.VIR_DOMAIN_SHUTDOWN_PARAVIRT,
}
POLL = 0.25


def is_down(hv: Hypervisor, name: str) -> bool:
    dom = hv.lookup(name)
    if dom is None:
        return True
    try:
        state, _reason = hv.call(f"reading the state of {name}", dom.state, limit=5)
    except LibvirtUnavailable:
        raise
    except VirtError as err:
        if is_not_running(err):
            return True
        raise
    return state == libvirt.VIR_DOMAIN_SHUTOFF


def wait_down(hv: Hypervisor, name: str, until: Deadline) -> bool:
    while True:
        if is_down(hv, name):
            return True
        if not until.pause(POLL):
            return False


def graceful_shutdown(hv: Hypervisor, dom: libvirt.virDomain, name: str, modes: list[str],
                      window: Deadline, log: Log) -> bool:
    """Ask the guest to power off, each mode in turn; True once it is down."""
    for index, mode in enumerate(modes or [""]):
        share = Deadline(window.remaining() / (len(modes or [""]) - index))
        flag = SHUTDOWN_FLAGS.get(mode, 0)
        try:
            hv.call(f"asking {name} to shut down" + (f" ({mode})" if mode else ""),
                    dom.shutdownFlags, flag, limit=min(10.0, share.remaining()))
        except LibvirtUnavailable as err:
            # A shutdown request that hangs (e.g. a guest agent that does not answer) must
            # not eat the destroy reserve.
            log.warning(f"shutdown request for {name} did not return: {err}")
            continue
        except VirtError as err:
            if is_not_running(err):
                return True
            log.warning(f"shutdown request{' (' + mode + ')' if mode else ''} for {name} "
                        f"refused: {err.reason}")
            continue
        log.info(f"waiting up to {share.remaining():.0f}s for {name} to shut down"
                 + (f" ({mode})" if mode else ""))
        if wait_down(hv, name, share):
            return True
    return False


def destroy(hv: Hypervisor, name: str, deadline: Deadline, log: Log) -> None:
    """Power the domain off; retries while libvirt reports the process busy."""
    while True:
        dom = hv.lookup(name)
        if dom is None:
            return
        try:
            hv.call(f"destroying {name}", dom.destroy, limit=deadline.remaining())
        except LibvirtUnavailable:
            raise
        except VirtError as err:
            if not is_not_running(err):
                log.warning(f"destroy of {name} failed: {err.reason}")
                if deadline.remaining() < 1:
                    raise OcfError(Rc.ERR_GENERIC, f"could not destroy {name}: {err.reason}") from None
                deadline.sleep(1)
                continue
        if wait_down(hv, name, deadline):
            return
        if deadline.expired():
            raise OcfError(Rc.ERR_GENERIC, f"{name} is still running after destroy")


def kill_qemu(identity: Identity, deadline: Deadline, log: Log) -> None:
    """Without libvirt: end the domain's QEMU ourselves, as libvirt's destroy would."""
    from ..virt import qemuproc

    procs = qemuproc.find(identity.name, identity.uuid)
    if not procs:
        return
    pids = [p.pid for p in procs]
    log.warning(f"libvirt unreachable: terminating QEMU of {identity.name} (pid {pids}) directly")
    for sig, grace in ((signal.SIGTERM, min(10.0, deadline.remaining() / 2)), (signal.SIGKILL, deadline.remaining())):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not qemuproc.find(identity.name, identity.uuid):
                return
            time.sleep(POLL)
    raise OcfError(Rc.ERR_GENERIC, f"QEMU of {identity.name} (pid {pids}) survived SIGKILL")


def verify_no_qemu(identity: Identity, deadline: Deadline) -> None:
    """libvirt says shut off; make sure no QEMU of ours lingers (it would still hold disks)."""
    from ..virt import qemuproc

    while qemuproc.find(identity.name, identity.uuid):
        if not deadline.pause(POLL):
            raise OcfError(Rc.ERR_GENERIC, f"{identity.name} is shut off but its QEMU process is still alive")
