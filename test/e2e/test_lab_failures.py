"""Node loss, hung nodes and broken hypervisors: fencing, recovery, no double run."""

import os
import signal
import time

import pytest

from ravada_lab import procs, vms

from lab_support import QemuWatch

pytestmark = pytest.mark.lab


def assert_never_twice(watch: QemuWatch, vm: str) -> None:
    doubled = [nodes for nodes in watch.nodes_of(vm) if len(nodes) > 1]
    assert not doubled, f"{vm} had QEMU processes on several nodes at once: {doubled[:3]}"


def assert_fenced_since(lab, node: str, since: float) -> None:
    """The lab's power switch was operated by the fence agent, and Pacemaker knows it."""
    assert lab.power_ops(node, since), f"{node} was not power-cycled by fence_ravada_lab since the test began"
    events = [e for e in lab.fence_events(node) if e.get("status") == "success"]
    assert events, f"Pacemaker's fencing history has no successful fencing of {node}"


def test_killed_node_is_fenced_and_its_vm_recovers(settled_lab, record_property):
    lab = settled_lab
    lab.create_vm("vmkill")
    try:
        victim = lab.wait_started("vmkill")
        with QemuWatch(lab) as watch:
            killed_at, wall = time.monotonic(), time.time()
            lab.cli("kill", victim)
            survivor = lab.wait_started("vmkill", not_on=(victim,))
            recovery = time.monotonic() - killed_at
        record_property("kill_recovery_seconds", round(recovery, 2))
        print(f"\n{victim} killed: vmkill running again on {survivor} after {recovery:.1f}s")
        assert_fenced_since(lab, victim, wall)
        assert_never_twice(watch, "vmkill")
        assert vms.qemu_nodes(lab.state()).get("vmkill") == [survivor]
    finally:
        lab.settle()
        lab.delete_vm("vmkill")


@pytest.mark.parametrize("fault, flag", [("freeze", "frozen"), ("cut", "cut")])
def test_hung_or_partitioned_node_is_fenced_and_vm_never_runs_twice(settled_lab, fault, flag):
    """freeze: a hung node; cut: a network partition. Either way the node is fenced (by
    reboot: it comes back thawed and cabled, without a stale copy of the guest)."""
    lab = settled_lab
    name = f"vm{fault}"
    lab.create_vm(name)
    try:
        victim = lab.wait_started(name)
        with QemuWatch(lab) as watch:
            wall = time.time()
            lab.cli(fault, victim)
            survivor = lab.wait_started(name, not_on=(victim,))
            lab.settle()
        assert_fenced_since(lab, victim, wall)
        assert_never_twice(watch, name)
        assert vms.qemu_nodes(lab.state()).get(name) == [survivor]
        assert not lab.state().data["nodes"][victim][flag]
    finally:
        lab.settle()
        lab.delete_vm(name)


def stop_libvirtd(lab, node: str) -> None:
    """SIGTERM the node's libvirtd, by the PID the lab recorded for it."""
    lab.cli("status")  # has the controller refresh its record of the node's daemons
    pid = lab.state().data["nodes"][node]["daemons"]["libvirtd"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while procs.alive(pid):
        assert time.monotonic() < deadline, f"libvirtd {pid} of {node} did not stop"
        time.sleep(0.05)


def test_failing_start_moves_vm_elsewhere_with_readable_failure(settled_lab):
    lab = settled_lab
    broken = lab.state().node_names[-1]
    lab.create_vm("vmfail", "--disabled")
    try:
        lab.pcs("constraint", "location", "vmfail", "prefers", f"{broken}=200")
        stop_libvirtd(lab, broken)
        lab.pcs("resource", "enable", "vmfail")
        elsewhere = lab.wait_started("vmfail", not_on=(broken,))
        view = lab.view()
        failure = view.failed.get("vmfail_start_0", "")
        assert failure.startswith(f"{broken}:"), f"no start failure on {broken}: {view.failed}"
        monitor = lab.run(elsewhere, "crm_mon", "-1").stdout
        print(f"\n{monitor}")
        assert "vmfail start on " + broken in monitor
        assert vms.qemu_nodes(lab.state()).get("vmfail") == [elsewhere]
    finally:
        # Power-cycle the broken node through the real fencing path: it boots with libvirtd.
        lab.run(lab.state().node_names[0], "stonith_admin", "--reboot", broken)
        lab.settle()
        lab.delete_vm("vmfail")
