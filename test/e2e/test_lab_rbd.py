"""VMs with RBD disks under Pacemaker, with power + storage fencing (a fencing topology).

A lab of its own (the session lab stays as other tests expect it) with a throw-away Ceph on its
switch. Every node is fenced by `lab-fence` (power, level 1) and, when that fails, by
`fence_rbd` (blocklisted at the OSDs, level 2); one kill test puts both in level 1 instead, the
freeze test gives the victim a power device that cannot fence. The VMs boot the seqwriter guest
from their RBD disk: it appends (instance id, sequence number) records for as long as it runs,
and every read of the image is audited: no record of a replaced instance may follow its
successor's first.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pytest

from ravada_lab import vms
from support import seqwriter
from support.stack import require_stack

import lab_ceph
from lab_support import SESSION, Lab, remove_stale_labs, running_lab

pytestmark = [pytest.mark.lab, pytest.mark.ceph]

LAB_NAME = f"rbd-{SESSION}"
NODES = 3
NODE_USER = "node"
QEMU_RBD_DRIVER = "/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so"
# The guard may wait out a dead client's watch (10 s here) before a start: room for it.
START_TIMEOUT = "120s"
# Fencing plus restart: normally 6-16 s; room for a fence device that needs Pacemaker's retries.
RECOVERY_TIMEOUT = 180.0


def require_ceph_stack() -> None:
    require_stack("the lab with Ceph", "ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool",
                  "as", "ld")
    if not Path(QEMU_RBD_DRIVER).exists():
        message = "QEMU's RBD driver is missing (qemu-block-extra, deps/ceph.list)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def rbd_lab(installed, request):
    require_ceph_stack()
    remove_stale_labs("rbd-", before_down=lab_ceph.stop_recorded)
    with running_lab(LAB_NAME, request, NODES) as lab:
        yield lab


@pytest.fixture(scope="module")
def ceph(rbd_lab, request):
    """Ceph on the lab switch, each node's Ceph address published, the node user's key as a
    libvirt secret on every node, and the two-level fencing topology."""
    failed_before = request.session.testsfailed
    cluster = lab_ceph.LabCeph(rbd_lab.layout).start()
    try:
        state = rbd_lab.state()
        for node in state.node_names:
            rbd_lab.run(node, "ravada-rbd", "--conf", str(cluster.conf), "--id", NODE_USER,
                        "--keyring", str(cluster.keyring(NODE_USER)), "publish")
            lab_ceph.define_ceph_secret(state, node, cluster)
        rbd_lab.pcs("stonith", "create", "rbd-fence", "fence_rbd", f"ceph_conf={cluster.conf}",
                    f"ceph_id={lab_ceph.FENCE_USER}",
                    f"keyring={cluster.keyring(lab_ceph.FENCE_USER)}",
                    f"pcmk_host_list={' '.join(state.node_names)}", "pcmk_reboot_action=off",
                    "meta", "provides=unfencing")
        for node in state.node_names:
            rbd_lab.pcs("stonith", "level", "add", "1", node, "lab-fence")
            rbd_lab.pcs("stonith", "level", "add", "2", node, "rbd-fence")
        rbd_lab.settle()
        yield cluster
    finally:
        if request.session.testsfailed > failed_before:
            keep_ceph_logs(cluster)
        cluster.stop()


def keep_ceph_logs(cluster: lab_ceph.LabCeph) -> None:
    """The Ceph directory goes with the cluster: save its logs first."""
    target = Path(tempfile.mkdtemp(prefix="ravada-lab-ceph-"))
    shutil.copytree(cluster.conf.parent / "log", target / "log")
    print(f"\nCeph logs kept in {target}")


def create_rbd_vm(lab: Lab, ceph: lab_ceph.LabCeph, name: str) -> None:
    spec = ceph.create_writer_image(name)
    config = lab_ceph.write_rbd_domain(lab.layout, name, ceph, spec)
    lab.pcs("resource", "create", name, "ocf:ravada:VirtualDomain", f"config={config}",
            f"ceph_conf={ceph.conf}", f"ceph_id={NODE_USER}",
            f"ceph_keyring={ceph.keyring(NODE_USER)}", "migration_transport=tcp",
            "force_stop=true", "op", "start", f"timeout={START_TIMEOUT}")


def wait_runs(ceph: lab_ceph.LabCeph, image: str, count: int, min_records: int = 1,
              timeout: float = 90.0) -> list[seqwriter.Run]:
    """Audit the image until it holds `count` instances' runs, the last with `min_records`."""
    deadline = time.monotonic() + timeout
    while True:
        runs = seqwriter.audit(ceph.read_image(image))
        if len(runs) >= count and runs[-1].count >= min_records:
            return runs
        assert time.monotonic() < deadline, f"{image}: {len(runs)} writer runs, waited for {count}"
        time.sleep(0.25)


def node_ip(lab: Lab, node: str) -> str:
    return str(lab.layout.node(node, NODES).address)


def fenced_at_osds(ceph: lab_ceph.LabCeph, ip: str) -> bool:
    """fence_rbd's whole-node entry (IP:0/0) is on the blocklist."""
    return any(entry["addr"] == f"{ip}:0/0" for entry in ceph.blocklist())


def wait_unfenced(ceph: lab_ceph.LabCeph, node: str, ip: str) -> None:
    """Pacemaker unfences a node (fence_rbd 'on') once it has rejoined."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while fenced_at_osds(ceph, ip):
        assert time.monotonic() < deadline, f"{node} still blocklisted after it rejoined"
        time.sleep(0.5)


def assert_fenced_in_history(lab: Lab, node: str) -> None:
    """Pacemaker's fencing history holds a successful reboot/off of `node` (the history is
    synchronised across the cluster within seconds)."""
    deadline = time.monotonic() + 15
    while True:
        events = lab.fence_events(node)
        if any(e.get("status") == "success" and e.get("action") in ("reboot", "off")
               for e in events):
            return
        assert time.monotonic() < deadline, f"no successful fencing of {node}: {events}"
        time.sleep(0.5)


@pytest.fixture
def one_level(rbd_lab):
    """set_for(node): both devices in level 1 of `node` (both must succeed), restored after."""
    lab = rbd_lab
    changed: list[str] = []

    def set_for(node: str) -> None:
        changed.append(node)
        for level in ("1", "2"):
            lab.pcs("stonith", "level", "remove", level, "target", node)
        lab.pcs("stonith", "level", "add", "1", node, "lab-fence,rbd-fence")

    yield set_for
    lab.settle()
    for node in changed:
        lab.pcs("stonith", "level", "remove", "1", "target", node)
        lab.pcs("stonith", "level", "add", "1", node, "lab-fence")
        lab.pcs("stonith", "level", "add", "2", node, "rbd-fence")


@pytest.mark.parametrize("topology", ["power-then-storage", "power-and-storage"])
def test_killed_node_is_fenced_and_rbd_vm_restarts_elsewhere(rbd_lab, ceph, one_level, topology,
                                                             record_property):
    """power-then-storage: level 1 lab-fence, level 2 fence_rbd (only if level 1 fails);
    power-and-storage: both in level 1, the node is also cut off at the OSDs."""
    lab = rbd_lab
    vm = "vmkill" if topology == "power-then-storage" else "vmkill2"
    create_rbd_vm(lab, ceph, vm)
    try:
        victim = lab.wait_started(vm)
        victim_ip = node_ip(lab, victim)
        if topology == "power-and-storage":
            one_level(victim)
        wait_runs(ceph, vm, 1, min_records=20)
        before = ceph.owner_record(vm)["owner"]
        assert before["node"] == victim and len(before["addrs"]) == 1, before
        killed_at, wall = time.monotonic(), time.time()
        lab.cli("kill", victim)
        survivor = lab.wait_started(vm, not_on=(victim,), timeout=RECOVERY_TIMEOUT)
        restarted = time.monotonic() - killed_at
        runs = wait_runs(ceph, vm, 2)
        writing = time.monotonic() - killed_at
        record_property("rbd_kill_restart_seconds", round(restarted, 2))
        record_property("rbd_kill_first_write_seconds", round(writing, 2))
        print(f"\n[{topology}] {victim} killed: {vm} started on {survivor} after "
              f"{restarted:.1f}s, its first record on disk after {writing:.1f}s")

        assert lab.power_ops(victim, wall), f"{victim} not power-fenced"
        assert_fenced_in_history(lab, victim)
        storage_fenced = ("add", f"{victim_ip}:0/0") in ceph.blocklist_changes(lab_ceph.FENCE_USER)
        if topology == "power-then-storage":
            # Level 1 sufficed, level 2 never ran; the agent's start blocklisted the dead
            # QEMU's own client (its exact address) before breaking its lock.
            assert not storage_fenced, f"{victim} fenced at the OSDs though power fencing worked"
            owner_entries = [addr for op, addr in ceph.blocklist_changes(NODE_USER)
                             if op == "add" and addr.startswith(f"{victim_ip}:0/")
                             and addr != f"{victim_ip}:0/0"]
            assert set(before["addrs"]) <= set(owner_entries), "the dead owner's QEMU was not blocklisted"
        else:
            assert storage_fenced, f"{victim} was not fenced at the OSDs"
        assert vms.qemu_nodes(lab.state()).get(vm) == [survivor]
        # The record was superseded: the new QEMU on the survivor, the dead one fenced.
        after = ceph.owner_record(vm)["owner"]
        assert after["node"] == survivor and after["addrs"] != before["addrs"], after
        assert before["addrs"][0] in {addr for op, addr in ceph.blocklist_changes(NODE_USER) if op == "add"}

        lab.settle()
        # Back in the cluster, the node is unfenced at the OSDs (provides=unfencing).
        wait_unfenced(ceph, victim, victim_ip)
        if storage_fenced:
            assert ("rm", f"{victim_ip}:0/0") in ceph.blocklist_changes(lab_ceph.FENCE_USER)
        final = wait_runs(ceph, vm, 2, min_records=runs[-1].count + 20)
        assert len(final) == 2, f"expected the killed and the new instance only: {final}"
    finally:
        lab.settle()
        lab.delete_vm(vm)


@pytest.fixture
def dead_power_fence(rbd_lab):
    """set_for(node): level 1 of `node` becomes a power device that cannot fence (a BMC that
    answers its health check but has lost its power switch); the topology is restored after."""
    lab = rbd_lab
    replaced: list[str] = []

    def set_for(node: str) -> None:
        # A lab that does not exist: every power action fails. Its monitor runs the agent's
        # always-successful metadata action, so the device itself starts cleanly.
        lab.pcs("stonith", "create", "dead-bmc", "fence_ravada_lab", "lab=no-such-lab",
                f"pcmk_host_list={node}", "pcmk_monitor_action=metadata")
        lab.pcs("stonith", "level", "remove", "1", "target", node)
        replaced.append(node)
        lab.pcs("stonith", "level", "add", "1", node, "dead-bmc")

    yield set_for
    for node in replaced:
        lab.pcs("stonith", "level", "remove", "1", "target", node)
        lab.pcs("stonith", "level", "add", "1", node, "lab-fence")
        lab.pcs("stonith", "delete", "dead-bmc")
    lab.settle()


def test_frozen_node_without_power_fencing_is_fenced_at_the_osds_and_never_writes_again(
        rbd_lab, ceph, dead_power_fence, record_property):
    lab = rbd_lab
    create_rbd_vm(lab, ceph, "vmfreeze")
    try:
        victim = lab.wait_started("vmfreeze")
        victim_ip = node_ip(lab, victim)
        dead_power_fence(victim)
        wait_runs(ceph, "vmfreeze", 1, min_records=20)
        frozen_at, wall = time.monotonic(), time.time()
        lab.cli("freeze", victim)
        survivor = lab.wait_started("vmfreeze", not_on=(victim,), timeout=RECOVERY_TIMEOUT)
        restarted = time.monotonic() - frozen_at
        runs = wait_runs(ceph, "vmfreeze", 2)
        writing = time.monotonic() - frozen_at
        record_property("rbd_freeze_restart_seconds", round(restarted, 2))
        record_property("rbd_freeze_first_write_seconds", round(writing, 2))
        print(f"\n{victim} frozen: vmfreeze started on {survivor} after {restarted:.1f}s, "
              f"its first record on disk after {writing:.1f}s")

        # Level 1 failed, level 2 fenced the node at the OSDs; its power was never touched.
        assert fenced_at_osds(ceph, victim_ip), f"{victim} ({victim_ip}) is not blocklisted"
        assert_fenced_in_history(lab, victim)
        assert not lab.power_ops(victim, wall)
        assert victim in lab.state().powered_nodes()

        # The node wakes up with its stale QEMU running and writing until Pacemaker, seeing
        # the VM active on two nodes, stops it: none of its writes may land (wait_runs audits
        # every read). Pacemaker may restart the VM (multiple-active=stop_start): a third
        # instance, appending too.
        frozen_run = runs[0]
        lab.cli("thaw", victim)
        thawed_at = time.monotonic()
        assert victim in vms.qemu_nodes(lab.state()).get("vmfreeze", []), \
            f"no stale QEMU on {victim} after the thaw: nothing to prove"
        while victim in vms.qemu_nodes(lab.state()).get("vmfreeze", []):
            assert time.monotonic() - thawed_at < 60, f"the stale QEMU on {victim} never stopped"
            time.sleep(0.2)
        stale_lifetime = time.monotonic() - thawed_at
        record_property("rbd_stale_qemu_after_thaw_seconds", round(stale_lifetime, 2))
        print(f"the thawed QEMU on {victim} ran {stale_lifetime:.1f}s before Pacemaker stopped it")
        thawed = wait_runs(ceph, "vmfreeze", 2, min_records=20)
        assert thawed[0] == frozen_run, f"the frozen instance wrote again: {thawed}"

        # The admin power-cycles the node; it rejoins and is unfenced (entries removed).
        lab.cli("kill", victim)
        lab.cli("on", victim)
        lab.settle()
        wait_unfenced(ceph, victim, victim_ip)
        # Pacemaker may have restarted or moved the VM meanwhile: new instances append.
        running_on = lab.wait_started("vmfreeze", timeout=RECOVERY_TIMEOUT)
        assert vms.qemu_nodes(lab.state()).get("vmfreeze") == [running_on]
        final = wait_runs(ceph, "vmfreeze", len(thawed), min_records=1)
        assert final[0] == frozen_run, f"the frozen instance wrote again: {final}"
    finally:
        lab.settle()
        lab.delete_vm("vmfreeze")


def synthetic_disk(*writes: tuple[int, int, int]) -> bytes:
    """A disk image with (sector, instance, sequence) records written in this order."""
    disk = bytearray(64 * seqwriter.SECTOR)
    for sector, instance, sequence in writes:
        struct.pack_into("<8sQI", disk, sector * seqwriter.SECTOR, seqwriter.MAGIC, instance,
                         sequence)
    return bytes(disk)


def test_audit_catches_a_stale_writer():
    """The audit is not vacuous: every way a stale instance's late write can land is caught."""
    old, new = 0xA, 0xB
    clean = [(1, old, 1), (2, old, 2), (3, new, 1), (4, new, 2), (5, new, 3)]
    assert [(r.instance, r.count) for r in seqwriter.audit(synthetic_disk(*clean))] == \
        [(old, 2), (new, 3)]
    late_writes = {
        "after the successor's records": (6, old, 3),
        "over the successor's first record": (3, old, 3),
        "over a later record of the successor": (4, old, 3),
    }
    for where, write in late_writes.items():
        with pytest.raises(AssertionError):
            seqwriter.audit(synthetic_disk(*clean, write))
            pytest.fail(f"a stale write {where} went unnoticed")
