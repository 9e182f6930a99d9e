"""The start guard against a real cluster and QEMU's real RBD driver (qemu-io).

The test process is node 'node-r'; the other nodes are network namespaces with their own IPs.
The cluster's osd_client_watch_timeout is 10 s.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rbd

from ravada_lab.microceph import IMAGE_FEATURES, NOCAP_USER, POOL, ROOT_NODE
from ocf_ravada.deadline import Deadline
from ocf_ravada.ocf import Rc
from ocf_ravada.rbd import (CephConfigMissing, CephSession, CephUnreachable, ImageMissing, MissingCaps,
                            NodeMap, Policy, RbdDisk, RbdGuard)
from ocf_ravada.vdomain.rbdparams import RBD_PARAMETERS, exit_code, open_guard
from ocf_ravada.rbd.fencing import fence_ips, unfence_ips

pytestmark = pytest.mark.ceph


@pytest.fixture
def guard_for(ceph):
    """guard_for(policy=..., user=...) -> an RbdGuard of node-r, closed after the test."""
    opened = []

    def make(policy: Policy = Policy.RECOVER, user: str = "node", **kwargs) -> RbdGuard:
        guard = RbdGuard.open(str(ceph.conf), user, str(ceph.keyring(user)), timeout=5, policy=policy,
                              node_map=NodeMap.parse(ceph.node_map_text()), local_node=ROOT_NODE,
                              reserve=0.5, poll_interval=0.2, **kwargs)
        opened.append(guard)
        return guard

    yield make
    for guard in opened:
        guard.close()


@pytest.fixture
def node_fenced(ceph):
    """node_fenced(node): fence the node's IP (as fence_rbd off does); unfenced after the test."""
    fenced = []

    def fence(node: str) -> None:
        with admin_session(ceph) as session:
            fence_ips(session, (ceph.nodes[node].ip,))
        fenced.append(ceph.nodes[node].ip)

    yield fence
    if fenced:
        with admin_session(ceph) as session:
            unfence_ips(session, tuple(fenced))


def admin_session(ceph) -> CephSession:
    return CephSession(str(ceph.conf), "admin", str(ceph.admin_keyring))


def disk(spec: str) -> RbdDisk:
    return RbdDisk.from_spec(spec)


def test_live_owner_blocks_a_second_start(ceph, qemu, image, guard_for):
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    before = ceph.image_state(image.split("/")[1])

    result = guard_for().before_start([disk(image)], Deadline(3))

    assert not result.allowed
    assert "node-a" in result.reason and vm_a.addr in result.reason
    assert result.actions == []
    assert ceph.image_state(image.split("/")[1]) == before       # nothing broken, nobody fenced
    assert not [e for e in ceph.blocklist() if e["addr"] == vm_a.addr]
    assert vm_a.write(0xAB).startswith("wrote")                  # the owner keeps working


def test_killed_owner_of_a_fenced_node_is_recovered_at_once(ceph, qemu, image, guard_for, node_fenced):
    name = image.split("/")[1]
    vm_c = qemu("node-c", image)
    assert vm_c.write(0xCC).startswith("wrote")
    vm_c.kill()
    node_fenced("node-c")                      # what fence_rbd off does when node-c is lost

    started = time.monotonic()
    result = guard_for().before_start([disk(image)], Deadline(30))
    elapsed = time.monotonic() - started

    assert result.allowed, result.reason
    assert elapsed < ceph.watch_timeout        # did not have to wait the dead watch out
    assert any(vm_c.addr in a for a in result.actions)
    assert ceph.image_state(name) == {"watchers": [], "lockers": []}
    vm_b = qemu("node-b", image)
    assert vm_b.write(0xBB).startswith("wrote")
    assert ceph.read(name, 0, 4) == b"\xbb" * 4


def test_killed_owner_without_fencing_is_recovered_after_its_watch_expires(ceph, qemu, image, guard_for):
    name = image.split("/")[1]
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    vm_a.kill()

    result = guard_for().before_start([disk(image)], Deadline(40))

    assert result.allowed, result.reason
    assert [e for e in ceph.blocklist() if e["addr"] == vm_a.addr]     # fenced exactly that client
    assert ceph.image_state(name)["lockers"] == []
    vm_b = qemu("node-b", image)
    assert vm_b.write(0xBB).startswith("wrote")


def test_hung_owner_fenced_then_resumed_cannot_write(ceph, qemu, image, guard_for, node_fenced):
    name = image.split("/")[1]
    vm_e = qemu("node-e", image)
    assert vm_e.write(0xEE).startswith("wrote")
    vm_e.stop()                                 # hung, like a node that lost the cluster network
    node_fenced("node-e")

    result = guard_for().before_start([disk(image)], Deadline(30))
    assert result.allowed, result.reason
    vm_b = qemu("node-b", image)
    assert vm_b.write(0xBB).startswith("wrote")

    vm_e.cont()
    late = vm_e.write(0xEF)
    assert "failed" in late and "shutdown" in late.lower(), late     # ESHUTDOWN: fenced
    assert ceph.read(name, 0, 4096) == b"\xbb" * 4096


def test_two_nodes_starting_the_same_vm_at_once_only_one_wins(ceph, image):
    name = image.split("/")[1]
    script = str(Path(__file__).with_name("node_start.py"))
    procs = []
    try:
        for node, pattern in (("node-a", "0xa1"), ("node-b", "0xb1")):
            argv = ceph.nodes[node].argv(sys.executable, script, str(ceph.conf), str(ceph.keyring("node")),
                                         node, ceph.node_map_text(), image, "4", pattern)
            procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        results = [json.loads(p.stdout.readline()) for p in procs]
        winners = [r for r in results if r["allowed"]]
        assert len(winners) == 1, results
        loser = next(r for r in results if not r["allowed"])
        assert "wrote 4096/4096" in winners[0]["wrote"], winners
        assert "refusing" in loser["reason"], loser
        watchers = ceph.image_state(name)["watchers"]
        assert [w.split(":")[0] for w in watchers] == [ceph.nodes[winners[0]["node"]].ip]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def test_missing_blocklist_cap_refuses_and_leaves_the_lock(ceph, qemu, image, guard_for):
    name = image.split("/")[1]
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    vm_a.kill()
    # drop the dead watch at once so the guard sees a stale lock without waiting 10 s
    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=vm_a.addr, expire=600.0)
    locked = ceph.image_state(name)["lockers"]
    assert locked

    with pytest.raises(MissingCaps) as err:
        guard_for(user=NOCAP_USER).before_start([disk(image)], Deadline(10))

    assert "profile rbd" in err.value.reason
    assert ceph.image_state(name)["lockers"] == locked


def test_vm_with_one_busy_disk_of_two_is_refused_and_nothing_is_touched(ceph, qemu, guard_for):
    stale_img, busy_img = ceph.create_image("two-disks-1"), ceph.create_image("two-disks-2")
    dead = qemu("node-a", stale_img)
    assert dead.write(0xAA).startswith("wrote")
    dead.kill()
    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=dead.addr, expire=600.0)
    live = qemu("node-b", busy_img)
    stale_before = ceph.image_state("two-disks-1")

    result = guard_for().before_start([disk(stale_img), disk(busy_img)], Deadline(3))

    assert not result.allowed
    assert "two-disks-2" in result.reason and "node-b" in result.reason
    assert result.actions == []
    assert ceph.image_state("two-disks-1") == stale_before        # stale lock not broken
    # the start claims were given back: once the busy disk is free, a start goes through
    live.quit()
    again = guard_for().before_start([disk(stale_img), disk(busy_img)], Deadline(10))
    assert again.allowed, again.reason


def test_check_policy_refuses_busy_but_leaves_stale_locks_alone(ceph, qemu, image, guard_for):
    name = image.split("/")[1]
    vm_a = qemu("node-a", image)
    assert vm_a.write(0xAA).startswith("wrote")
    assert not guard_for(Policy.CHECK).before_start([disk(image)], Deadline(2)).allowed
    vm_a.kill()
    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=vm_a.addr, expire=600.0)
    locked = ceph.image_state(name)["lockers"]

    result = guard_for(Policy.CHECK).before_start([disk(image)], Deadline(5))

    assert result.allowed and "stale" in result.reason
    assert ceph.image_state(name)["lockers"] == locked


def test_monitor_sees_split_brain_and_lost_watch(ceph, qemu, image, guard_for):
    guard = guard_for()
    here = qemu(ROOT_NODE, image)
    assert here.write(0x11).startswith("wrote")
    assert guard.check_running([disk(image)]).ok

    intruder = qemu("node-a", image)
    check = guard.check_running([disk(image)])
    assert not check.ok and check.split_brain and "node-a" in check.reason
    intruder.quit()

    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=here.addr, expire=600.0)
    check = guard.check_running([disk(image)], confirm_seconds=1)
    assert check.lost_watch and not check.ok


def test_monitor_ignores_a_short_visit_by_another_client(ceph, qemu, image, guard_for):
    guard = guard_for()
    here = qemu(ROOT_NODE, image)
    assert here.write(0x11).startswith("wrote")
    visitor = qemu("node-a", image)          # e.g. an admin's 'rbd snap create' from elsewhere
    leaving = threading.Timer(0.5, visitor.quit)
    leaving.start()
    try:
        check = guard.check_running([disk(image)], confirm_seconds=8)
    finally:
        leaving.join()
    assert check.ok, check.reason


def test_watch_only_hosts_do_not_block_but_their_locks_do(ceph, qemu, image, guard_for):
    mirror_ip = ceph.nodes["node-c"].ip
    guard = guard_for(watch_only_ips=[mirror_ip])
    watcher = qemu("node-c", image)          # opens (watches) but does not write: like rbd-mirror
    assert guard.before_start([disk(image)], Deadline(3)).allowed
    guard.after_start([disk(image)])
    assert watcher.write(0xCC).startswith("wrote")     # now it holds the lock: a writer after all
    result = guard.before_start([disk(image)], Deadline(3))
    assert not result.allowed and "locked by live" in result.reason and "node-c" in result.reason


def test_migration_accepts_the_partner_only(ceph, qemu, image, guard_for):
    guard = guard_for()
    source = qemu(ROOT_NODE, image)
    assert source.write(0x11).startswith("wrote")
    qemu("node-a", image)                                        # the incoming side

    assert guard.before_start([disk(image)], Deadline(5), migration_partner="node-a").allowed
    third = qemu("node-b", image)
    result = guard.before_start([disk(image)], Deadline(5), migration_partner="node-a")
    assert not result.allowed and "node-b" in result.reason and third.addr in result.reason
    assert result.actions == []


def test_after_stop_cuts_off_a_leftover_client_of_this_node(ceph, qemu, image, guard_for):
    name = image.split("/")[1]
    vm = qemu(ROOT_NODE, image)
    assert vm.write(0x11).startswith("wrote")
    vm.kill()                                   # destroy: the dead watch would linger 10 s

    result = guard_for().after_stop([disk(image)], Deadline(10))

    assert result.allowed, result.reason
    assert [e for e in ceph.blocklist() if e["addr"] == vm.addr]
    assert ceph.image_state(name)["watchers"] == []


def test_missing_image_is_a_clear_error(ceph, guard_for):
    with pytest.raises(ImageMissing, match="nope"):
        guard_for().before_start([disk(f"{POOL}/nope")], Deadline(5))


def test_unreachable_cluster_is_an_error_within_the_timeout(ceph, tmp_path):
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon host = 127.0.0.1:1\n")
    started = time.monotonic()
    with pytest.raises(CephUnreachable, match="not reachable"):
        RbdGuard.open(str(dead), "node", str(ceph.keyring("node")), timeout=2)
    assert time.monotonic() - started < 30          # bounded, not a hang


def test_agent_parameters_open_a_guard(ceph, qemu, image):
    defaults = {p.name: p.parse(None) for p in RBD_PARAMETERS}
    assert defaults["rbd_lock_policy"] == "recover" and defaults["ceph_conf"] == "/etc/ceph/ceph.conf"
    assert open_guard({**defaults, "rbd_lock_policy": "off"}, ROOT_NODE, Deadline(10)) is None
    values = {**defaults, "ceph_conf": str(ceph.conf), "ceph_id": "node",
              "ceph_keyring": str(ceph.keyring("node")), "rbd_watch_only_ips": ceph.nodes["node-c"].ip}
    with open_guard(values, ROOT_NODE, Deadline(10)) as guard:
        assert guard.policy is Policy.RECOVER and guard.watch_only_ips == {ceph.nodes["node-c"].ip}
        qemu("node-c", image)
        assert guard.before_start([disk(image)], Deadline(3)).allowed
        guard.after_start([disk(image)])
    with pytest.raises(CephConfigMissing) as err:
        open_guard({**values, "ceph_keyring": "/nonexistent/keyring"}, ROOT_NODE, Deadline(10))
    assert exit_code(err.value) is Rc.ERR_INSTALLED


def test_images_in_a_namespace_are_guarded(ceph, qemu, guard_for):
    with ceph.admin.open_ioctx(POOL) as io:
        rbd.RBD().namespace_create(io, "tenant1")
        io.set_namespace("tenant1")
        rbd.RBD().create(io, "ns-disk", 64 << 20, old_format=False, features=IMAGE_FEATURES)
    spec = f"{POOL}/tenant1/ns-disk"
    vm_a = qemu("node-a", spec)
    assert vm_a.write(0xAA).startswith("wrote")
    result = guard_for().before_start([disk(spec)], Deadline(2))
    assert not result.allowed and spec in result.reason and "node-a" in result.reason
    vm_a.kill()
    ceph.mon_command(prefix="osd blocklist", blocklistop="add", addr=vm_a.addr, expire=600.0)
    assert guard_for().before_start([disk(spec)], Deadline(10)).allowed
    assert ceph.image_state("tenant1/ns-disk") == {"watchers": [], "lockers": []}
