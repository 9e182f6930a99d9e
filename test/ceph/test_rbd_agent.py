"""ocf:ravada:VirtualDomain with RBD disks: real Ceph, real libvirtd, real QEMU opening the
image through its RBD driver, the agent run as Pacemaker runs it."""
from __future__ import annotations

import os
import signal
import time
import uuid

import libvirt
import pytest

from ravada_lab.microceph import NODE_USER, ROOT_NODE, rbd_disk_xml
from node_agent import record_of
from rbd_domains import ceph_secret
from support.libvirt_node import domain_xml

pytestmark = [pytest.mark.ceph, pytest.mark.libvirt]


@pytest.fixture
def rbd_vm(ceph, libvirt_node, image, tmp_path):
    """A domain config whose only disk is `image`, and the agent parameters to run it."""
    conn = libvirt_node.connect()
    name = f"rbdvm{uuid.uuid4().hex[:6]}"
    config = tmp_path / f"{name}.xml"
    config.write_text(domain_xml(name, extra_devices=rbd_disk_xml(ceph, image, ceph_secret(conn, ceph))))
    params = {"config": str(config), "ceph_conf": str(ceph.conf), "ceph_id": NODE_USER,
              "ceph_keyring": str(ceph.keyring(NODE_USER))}
    yield params, name, image.split("/")[1]
    try:
        conn.lookupByName(name).destroy()
    except libvirt.libvirtError:
        pass
    conn.close()


def running(node, name) -> bool:
    conn = node.connect()
    try:
        return conn.lookupByName(name).isActive() == 1
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def test_start_is_refused_while_another_node_has_the_disk_open(libvirt_node, rbd_vm, qemu, image):
    params, name, _img = rbd_vm
    owner = qemu("node-b", image)
    started = libvirt_node.agent("start", params, {"timeout": "25000"})
    assert started.returncode == 1, started.stderr
    reason = [l for l in started.stderr.splitlines() if l.startswith("ocf-exit-reason:")][-1]
    assert "node-b" in reason or owner.my_watchers()[0].split(":")[0] in reason, reason
    assert not running(libvirt_node, name), "the VM must not start while the disk is in use"


def test_start_recovers_the_stale_lock_of_a_killed_owner(ceph, libvirt_node, rbd_vm, qemu, image):
    params, name, img = rbd_vm
    owner = qemu("node-b", image)
    owner.write(0x11)  # takes the exclusive lock
    owner.kill()  # a power cut: lock and watch stay behind
    begin = time.monotonic()
    started = libvirt_node.agent("start", params, {"timeout": "60000"}, timeout=90)
    assert started.returncode == 0, started.stderr
    assert running(libvirt_node, name)
    assert "RBD recovery before start" in started.stderr
    owner_ip = ceph.nodes["node-b"].ip
    assert any(owner_ip in str(entry) for entry in ceph.blocklist()), "the dead owner must be cut off"
    assert time.monotonic() - begin < 60
    stopped = libvirt_node.agent("stop", {**params, "force_stop": "1"}, {"timeout": "30000"})
    assert stopped.returncode == 0, stopped.stderr
    assert ceph.image_state(img)["watchers"] == []


def test_monitor_reports_split_brain_when_another_node_opens_the_disk(libvirt_node, rbd_vm, qemu, image):
    params, name, _img = rbd_vm
    assert libvirt_node.agent("start", params, {"timeout": "30000"}).returncode == 0
    monitor = {"interval": "10000", "timeout": "20000"}
    assert libvirt_node.agent("monitor", params, monitor).returncode == 0
    intruder = qemu("node-b", image)
    try:
        split = libvirt_node.agent("monitor", params, monitor)
        assert split.returncode == 1
        assert "ocf-exit-reason:SPLIT BRAIN" in split.stderr
    finally:
        intruder.quit()
    assert libvirt_node.agent("stop", {**params, "force_stop": "1"}, {"timeout": "30000"}).returncode == 0
    assert not running(libvirt_node, name)


def test_policy_off_does_not_look_at_ceph(libvirt_node, rbd_vm, qemu, image):
    params, name, _img = rbd_vm
    broken = {**params, "rbd_lock_policy": "off", "ceph_conf": "/nonexistent/ceph.conf"}
    started = libvirt_node.agent("start", broken, {"timeout": "30000"})
    assert started.returncode == 0, started.stderr
    assert running(libvirt_node, name)


def test_missing_ceph_config_is_a_node_local_error(libvirt_node, rbd_vm):
    params, name, _img = rbd_vm
    started = libvirt_node.agent("start", {**params, "ceph_conf": "/nonexistent/ceph.conf"}, {"timeout": "20000"})
    assert started.returncode == 5, started.stderr
    assert not running(libvirt_node, name)


def test_unknown_lock_policy_is_a_configuration_error(libvirt_node, rbd_vm):
    params, _name, _img = rbd_vm
    started = libvirt_node.agent("start", {**params, "rbd_lock_policy": "yolo"}, {"timeout": "20000"})
    assert started.returncode == 6
    assert "expected one of off, check, recover" in started.stderr


def hmp_write(node, name: str, pattern: int) -> str:
    """The VM's own QEMU writes its disk, as its guest would: HMP qemu-io on the virtio disk's
    block backend (device path from libvirt's alias of the disk)."""
    import libvirt_qemu
    from lxml import etree

    conn = node.connect()
    try:
        dom = conn.lookupByName(name)
        alias = etree.fromstring(dom.XMLDesc()).find("devices/disk/alias").get("name")
        return libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d /machine/peripheral/{alias}/virtio-backend "write -P {pattern:#x} 0 4k"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    finally:
        conn.close()


def test_frozen_vm_that_never_wrote_is_cut_off_before_a_start_elsewhere(
        ceph, libvirt_node, rbd_vm, agents, admin, image):
    """The agent's start records QEMU's client address; a start on another node blocklists
    exactly that QEMU even though it never wrote (no lock) and its watch has expired."""
    params, name, img = rbd_vm
    meta = {"timeout": "30000", "on_node": ROOT_NODE}
    started = libvirt_node.agent("start", params, meta)
    assert started.returncode == 0, started.stderr
    recorded = record_of(admin, image).owner
    assert recorded.node == ROOT_NODE and len(recorded.addrs) == 1, recorded
    assert ceph.image_state(img)["lockers"] == []          # the disk-less guest never writes
    qemu_pid = libvirt_node.qemu_pid(name)
    os.kill(qemu_pid, signal.SIGSTOP)
    try:
        elsewhere = agents("node-b", image, deadline=40, pattern="0xbb")
        assert elsewhere.allowed, elsewhere.result
        assert any(recorded.addrs[0] in action for action in elsewhere.result["actions"])
    finally:
        os.kill(qemu_pid, signal.SIGCONT)
    hmp_write(libvirt_node, name, 0xAA)            # qemu-io prints to QEMU's log, not HMP
    log = libvirt_node.domain_log(name)
    assert "write failed" in log and "shutdown" in log.lower(), log[-2000:]
    assert ceph.read(img, 0, 4096) == b"\xbb" * 4096

    monitor = libvirt_node.agent("monitor", params, {"interval": "10000", "timeout": "20000", "on_node": ROOT_NODE})
    assert monitor.returncode == 1 and "node-b" in monitor.stderr, monitor.stderr
    stopped = libvirt_node.agent("stop", {**params, "force_stop": "1"}, meta)
    assert stopped.returncode == 0, stopped.stderr
    assert record_of(admin, image).owner.node == "node-b"   # the stale side's stop leaves it alone


def test_start_logs_its_wait_for_a_watch(libvirt_node, rbd_vm, qemu, image):
    params, _name, _img = rbd_vm
    owner = qemu("node-b", image)
    started = libvirt_node.agent("start", params, {"timeout": "8000"})
    assert started.returncode == 1
    assert "waiting up to" in started.stderr and owner.addr in started.stderr, started.stderr
