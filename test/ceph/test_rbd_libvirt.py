"""The guard around a real libvirt domain whose disk is an RBD image (QEMU started by a private
libvirtd, authenticated with a libvirt ceph secret), as the VM agent will use it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ravada_lab.microceph import NODE_USER, ROOT_NODE, rbd_disk_xml
from rbd_domains import ceph_secret
from ocf_ravada.deadline import Deadline
from ocf_ravada.rbd import NodeMap, Policy, RbdGuard, disks_from_domain_xml
from support.libvirt_node import domain_xml

pytestmark = [pytest.mark.ceph, pytest.mark.libvirt]


def start_elsewhere(ceph, node: str, spec: str) -> dict:
    """node_start.py in another node: the storage half of the agent's start there."""
    script = str(Path(__file__).with_name("node_start.py"))
    proc = subprocess.Popen(ceph.nodes[node].argv(sys.executable, script, str(ceph.conf),
                                                  str(ceph.keyring(NODE_USER)), node, ceph.node_map_text(),
                                                  spec, "3", "0x5a"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    result = json.loads(proc.stdout.readline())
    proc.stdin.close()
    proc.wait(timeout=60)
    return result


def test_libvirt_domain_on_rbd_is_guarded_from_start_to_stop(ceph, libvirt_node, qemu, image):
    conn = libvirt_node.connect()
    xml = domain_xml("rbd-vm", extra_devices=rbd_disk_xml(ceph, image, ceph_secret(conn, ceph)))
    disks = disks_from_domain_xml(xml)
    assert [d.spec for d in disks] == [image]
    guard = RbdGuard.open(str(ceph.conf), NODE_USER, str(ceph.keyring(NODE_USER)), timeout=5,
                          policy=Policy.RECOVER, node_map=NodeMap.parse(ceph.node_map_text()),
                          local_node=ROOT_NODE, reserve=0.5, poll_interval=0.2)
    try:
        assert guard.before_start(disks, Deadline(10)).allowed
        domain = conn.createXML(xml, 0)
        guard.after_start(disks)
        name = image.split("/")[1]
        assert [w.split(":")[0] for w in ceph.image_state(name)["watchers"]] == [ceph.mon_ip]
        assert guard.check_running(disks).ok

        refused = start_elsewhere(ceph, "node-a", image)
        assert not refused["allowed"] and ROOT_NODE in refused["reason"], refused

        intruder = qemu("node-b", image)
        check = guard.check_running(disks)
        assert check.split_brain and "node-b" in check.reason
        intruder.quit()

        domain.destroy()
        stopped = guard.after_stop(disks, Deadline(10))
        assert stopped.allowed, stopped.reason
        assert ceph.image_state(name)["watchers"] == []
        assert start_elsewhere(ceph, "node-a", image)["allowed"]
    finally:
        guard.close()
        conn.close()
