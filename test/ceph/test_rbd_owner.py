"""The owner record closes the window in which a VM's QEMU has its disk open but holds no lock
(librbd locks at the first write): a frozen owner that never wrote is blocklisted before a
start elsewhere, whichever way it froze.  Real Ceph, QEMU's own RBD driver (qemu-io) inside
simulated nodes; each start runs the agent's storage half (node_start.py) on its node.
The cluster's osd_client_watch_timeout is 10 s."""
from __future__ import annotations

import time

import pytest

from ravada_lab.microceph import ROOT_NODE
from node_agent import NodeAgent, record_of
from ocf_ravada.deadline import Deadline
from ocf_ravada.rbd import NodeMap, Policy, RbdDisk, RbdGuard
from ocf_ravada.rbd import owner
from ocf_ravada.rbd.fencing import fence_ips, unfence_ips

pytestmark = pytest.mark.ceph


def blocklisted(ceph, addr: str) -> bool:
    return any(entry["addr"] == addr for entry in ceph.blocklist())


def assert_cut_off(agent: NodeAgent) -> None:
    late = agent.write(0xEE)
    assert "failed" in late and "shutdown" in late.lower(), late      # ESHUTDOWN: fenced


def test_frozen_owner_that_never_wrote_is_fenced_before_a_start_elsewhere(ceph, image, agents, admin):
    name = image.split("/")[1]
    vm_a = agents("node-a", image)                   # booting: disk open, never written, no lock
    assert vm_a.allowed, vm_a.result
    recorded = record_of(admin, image).owner
    assert recorded.node == "node-a" and len(recorded.addrs) == 1
    qemu_a = recorded.addrs[0]
    assert qemu_a.startswith(ceph.nodes["node-a"].ip + ":")
    assert ceph.image_state(name)["lockers"] == []
    vm_a.freeze()                                     # hung node (or one wrongly believed gone)

    vm_b = agents("node-b", image, pattern="0xbb")

    assert vm_b.allowed, vm_b.result
    # fenced during B's start, i.e. before B's QEMU opened the image
    assert any(qemu_a in action for action in vm_b.result["actions"]), vm_b.result
    assert blocklisted(ceph, qemu_a)
    assert "wrote 4096/4096" in vm_b.result["wrote"]
    assert record_of(admin, image).owner.node == "node-b"
    vm_a.thaw()
    assert_cut_off(vm_a)
    assert "wrote" in vm_b.write(0xBC)                # B keeps the lock: no alternating writers
    assert ceph.read(name, 0, 4096) == b"\xbc" * 4096


def test_frozen_migration_is_fenced_on_both_ends(ceph, image, agents, admin, qemu):
    name = image.split("/")[1]
    source = agents("node-a", image)
    assert source.allowed, source.result
    qemu_a = record_of(admin, image).owner.addrs[0]
    with RbdGuard.open(str(ceph.conf), "node", str(ceph.keyring("node")), timeout=5,
                       node_map=NodeMap.parse(ceph.node_map_text()), local_node="node-a") as guard:
        begun = guard.begin_migration([RbdDisk.from_spec(image)], "node-b")
    assert begun.allowed, begun.reason
    during = record_of(admin, image)
    assert during.owner.node == "node-a" and during.incoming.node == "node-b"
    target = qemu("node-b", image)                    # the incoming QEMU opens the image
    source.freeze()
    target.stop()                                     # both ends hang mid-migration

    vm_c = agents("node-c", image, deadline=40, pattern="0xcc")

    assert vm_c.allowed, vm_c.result
    assert blocklisted(ceph, qemu_a) and blocklisted(ceph, target.addr)
    source.thaw()
    target.cont()
    assert_cut_off(source)
    late = target.write(0xEF)
    assert "failed" in late and "shutdown" in late.lower(), late
    assert ceph.read(name, 0, 4096) == b"\xcc" * 4096


def test_a_migration_target_of_unknown_address_blocks_a_start_until_its_node_is_fenced(
        ceph, image, agents, admin, qemu):
    source = agents("node-a", image)
    qemu_a = record_of(admin, image).owner.addrs[0]
    with RbdGuard.open(str(ceph.conf), "node", str(ceph.keyring("node")), timeout=5,
                       node_map=NodeMap.parse(ceph.node_map_text()), local_node="node-a") as guard:
        assert guard.begin_migration([RbdDisk.from_spec(image)], "node-d").allowed
    target = qemu("node-d", image)
    source.freeze()
    target.stop()
    time.sleep(ceph.watch_timeout + 2)               # both watches gone before anyone looks

    refused = agents("node-c", image, deadline=20)

    assert not refused.allowed
    assert "node-d" in refused.result["reason"] and "unknown" in refused.result["reason"]
    assert record_of(admin, image).incoming.node == "node-d"        # nothing changed
    fence_ips(admin, (ceph.nodes["node-d"].ip,))                     # fence_rbd off node-d
    try:
        vm_c = agents("node-c", image, deadline=20, pattern="0xcc")
        assert vm_c.allowed, vm_c.result
        assert blocklisted(ceph, qemu_a)
        source.thaw()
        target.cont()
        assert_cut_off(source)
        assert "failed" in target.write(0xEF)
    finally:
        unfence_ips(admin, (ceph.nodes["node-d"].ip,))


def test_clean_stop_then_start_elsewhere_fences_nothing_and_does_not_wait(ceph, image, agents, admin):
    vm_a = agents("node-a", image, pattern="0xaa")
    assert vm_a.allowed
    assert "no client of this node" in vm_a.stop()
    assert record_of(admin, image).empty
    before = ceph.blocklist()

    started = time.monotonic()
    vm_b = agents("node-b", image, pattern="0xbb")
    elapsed = time.monotonic() - started

    assert vm_b.allowed, vm_b.result
    assert vm_b.result["actions"] == []
    assert ceph.blocklist() == before
    assert elapsed < 5, elapsed                       # no watch to wait out, nothing to confirm


def test_owner_restarted_on_its_node_with_a_new_address_is_the_one_fenced(ceph, image, agents, admin):
    first = agents("node-a", image)
    old_addr = record_of(admin, image).owner.addrs[0]
    first.crash()                                     # QEMU died; Pacemaker restarts it there
    first.close()

    second = agents("node-a", image, deadline=40)     # waits out the dead watch, then fences it

    assert second.allowed, second.result
    assert blocklisted(ceph, old_addr)
    new_addr = record_of(admin, image).owner.addrs[0]
    assert new_addr != old_addr and new_addr.startswith(ceph.nodes["node-a"].ip + ":")
    second.freeze()

    vm_b = agents("node-b", image, deadline=40, pattern="0xbb")

    assert vm_b.allowed, vm_b.result
    assert blocklisted(ceph, new_addr)
    second.thaw()
    assert_cut_off(second)


def test_a_recorded_start_without_address_refuses_until_that_node_is_fenced(ceph, image, agents, admin):
    disk = RbdDisk.from_spec(image)
    # node-e's agent wrote its record and froze before its QEMU opened the image
    owner.store(admin, disk, owner.OwnerRecord(), owner.OwnerRecord().owned_by(owner.Party("node-e")))

    refused = agents("node-b", image, deadline=10)

    assert not refused.allowed
    assert "node-e" in refused.result["reason"]
    assert record_of(admin, image).owner.node == "node-e"
    fence_ips(admin, (ceph.nodes["node-e"].ip,))
    try:
        vm_b = agents("node-b", image, deadline=10)
        assert vm_b.allowed, vm_b.result
        assert record_of(admin, image).owner.node == "node-b"
    finally:
        unfence_ips(admin, (ceph.nodes["node-e"].ip,))


def test_a_stopping_old_owner_never_clears_the_new_owners_record(ceph, image, agents, admin):
    vm_a = agents("node-a", image)
    vm_a.freeze()
    vm_b = agents("node-b", image, deadline=40)
    assert vm_b.allowed
    vm_a.thaw()
    vm_a.stop()                                       # the stale side is stopped afterwards
    assert record_of(admin, image).owner.node == "node-b"


def test_check_policy_refuses_an_unfenced_owner_without_a_lock(ceph, image, agents):
    vm_a = agents("node-a", image)
    vm_a.freeze()
    with RbdGuard.open(str(ceph.conf), "node", str(ceph.keyring("node")), timeout=5,
                       policy=Policy.CHECK, node_map=NodeMap.parse(ceph.node_map_text()),
                       local_node=ROOT_NODE, reserve=0.5, poll_interval=0.2) as guard:
        result = guard.before_start([RbdDisk.from_spec(image)], Deadline(30))
    assert not result.allowed
    assert "does not fence" in result.reason and "node-a" in result.reason


def test_a_record_that_is_not_ours_is_a_clear_error(ceph, image, admin):
    admin.ioctx("vmpool").write_full(owner.OBJECT_PREFIX + image.split("/")[1], b"\x00garbage")
    with RbdGuard.open(str(ceph.conf), "node", str(ceph.keyring("node")), timeout=5,
                       local_node=ROOT_NODE, reserve=0.5) as guard:
        with pytest.raises(owner.BadRecord, match="owner record is not JSON"):
            guard.before_start([RbdDisk.from_spec(image)], Deadline(5))


def test_two_hosts_with_one_name_are_told_apart_by_their_ips(ceph, image, agents, admin):
    """Without Pacemaker's node name both hosts may call themselves the same: the record keeps
    their Ceph IPs, so neither mistakes the other's entry for its own."""
    vm_a = agents("node-a", image)
    a_entry = record_of(admin, image).owner
    assert a_entry.ips == (ceph.nodes["node-a"].ip,)
    with RbdGuard.open(str(ceph.conf), "node", str(ceph.keyring("node")), timeout=5,
                       local_node="node-a", reserve=0.5) as same_name_elsewhere:   # node-r's IP
        same_name_elsewhere.after_stop([RbdDisk.from_spec(image)], Deadline(5))
        assert record_of(admin, image).owner == a_entry          # not taken for its own
        assert not same_name_elsewhere.check_running([RbdDisk.from_spec(image)], 0).ok
    vm_a.stop()
    assert record_of(admin, image).empty
