"""ocf:ravada:basesync on the session lab (3 real Pacemaker nodes, real sshd and rsync between
them, host keys verified): created with `pcs resource create ... clone` as the README shows,
node1 is the main node. The first sync, a new base, a corrupted copy repaired, the source lost
mid-transfer (resumed from another holder), a disk too small (refused, nothing half-written),
a base an overlay uses kept, and Pacemaker keeping a VM with meta ravada-base=X off the node
lacking X until its copy is verified there."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest

from ravada_lab.domains import write_domain
from ravada_lab.vms import create_argv
from support import basesync_lab as bl

pytestmark = pytest.mark.lab
MIB = 1024 * 1024
NODES = ("node1", "node2", "node3")
SYNC_TIMEOUT = 120.0


def sha256_on(lab, node: str, file: str) -> str:
    return lab.run(node, "sha256sum", f"{bl.DIRECTORY}/{file}").stdout.split()[0]


@pytest.fixture(scope="module")
def synced(lab):
    """The basesync clone on the session lab with one base, deb12, verified on every node."""
    lab.settle()
    state = lab.state()
    keydir = tempfile.mkdtemp(prefix="e2e-basesync-", dir="/var/tmp")
    key = bl.make_key(keydir)
    bl.prepare_nodes(state, key)
    bl.write_base(state, "node1", "deb12.img", 8)
    digest = bl.add_base(state, "deb12.img", "deb12")
    bl.create_clone(state, key, "reserve=0", "poll_interval=2", "stall_timeout=8")
    try:
        yield {"deb12": digest, "key": key}
    finally:
        lab.pcs("resource", "delete", "basesync")
        for node in lab.state().node_names:
            lab.run(node, "sh", "-c", f"rm -rf {bl.DIRECTORY}/*.img {bl.DIRECTORY}/*.qcow2 {bl.DIRECTORY}/.basesync",
                    check=False)
            lab.run(node, "sed", "-i", "/ basesync$/d", "/root/.ssh/authorized_keys", check=False)
            for name in ("deb12", "win10", "big", "desk", "vmbase"):
                lab.run(node, "crm_attribute", "--type", "nodes", "--node", node, "--name", f"ravada-base-{name}",
                        "--delete", "--lifetime", "reboot", check=False)
        shutil.rmtree(keydir, ignore_errors=True)


def test_pcs_clone_brings_every_node_in_sync_with_verified_digests(lab, synced):
    state = lab.state()
    bl.wait_attributes(state, "deb12", {n: synced["deb12"] for n in NODES}, SYNC_TIMEOUT)
    for node in NODES:
        assert sha256_on(lab, node, "deb12.img") == synced["deb12"]
    for node in NODES[1:]:    # node1's is the admin's original; the copies are read-only
        assert lab.run(node, "stat", "-c", "%a", f"{bl.DIRECTORY}/deb12.img").stdout.strip() == "444"
    deadline = time.monotonic() + 30
    while "in sync 1/1" not in lab.run("node3", "crm_attribute", "--type", "nodes", "--node", "node3", "--name",
                                       "ravada-basesync-status", "--query", "--lifetime", "reboot",
                                       check=False).stdout:
        assert time.monotonic() < deadline, "ravada-basesync-status never said 'in sync 1/1'"
        time.sleep(1)


def test_a_new_base_on_the_main_node_appears_on_every_node(lab, synced):
    state = lab.state()
    bl.write_base(state, "node1", "win10.img", 4)
    digest = bl.add_base(state, "win10.img", "win10")
    bl.wait_attributes(state, "win10", {n: digest for n in NODES}, SYNC_TIMEOUT)
    assert sha256_on(lab, "node2", "win10.img") == digest


def test_a_corrupted_copy_is_detected_and_repaired(lab, synced):
    state = lab.state()
    bl.wait_attributes(state, "deb12", {n: synced["deb12"] for n in NODES}, SYNC_TIMEOUT)
    lab.run("node3", "dd", "if=/dev/zero", f"of={bl.DIRECTORY}/deb12.img", "bs=1", "count=64", "seek=4096",
            "conv=notrunc", "status=none")
    assert sha256_on(lab, "node3", "deb12.img") != synced["deb12"]
    deadline = time.monotonic() + SYNC_TIMEOUT
    while sha256_on(lab, "node3", "deb12.img") != synced["deb12"]:
        assert time.monotonic() < deadline, "the corrupted copy was not repaired"
        time.sleep(1)
    bl.wait_attributes(state, "deb12", {"node3": synced["deb12"]}, SYNC_TIMEOUT)


def test_the_source_lost_mid_transfer_the_copy_resumes_from_another_holder(lab, synced):
    state = lab.state()
    lab.shape("24mbit")    # ~3 MB/s: long enough to lose the source mid-transfer
    try:
        bl.write_base(state, "node1", "big.img", 40)
        digest = bl.add_base(state, "big.img", "big", ["node3"])
        bl.wait_attributes(state, "big", {"node3": digest}, SYNC_TIMEOUT)
        # node2 joins the list: it stands right after node1 in the chain, so it pulls from node1.
        bl.add_base(state, "big.img", "big", ["node2", "node3"])
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            report = bl.status_of(state, "node2").get("bases", {}).get("big", {})
            if report.get("state") == "fetching" and report.get("bytes", 0) > 4 * MIB:
                break
            assert time.monotonic() < deadline, f"node2 never started copying big: {report}"
            time.sleep(0.5)
        assert report["holder"] == "node1"
        lab.cli("kill", "node1")     # power cut: the main node and its sshd die mid-transfer
        try:
            assert not bl.file_on(state, "node2", "big.img")
            bl.wait_attributes(state, "big", {"node2": digest}, SYNC_TIMEOUT, via="node2")
            final = bl.status_of(state, "node2")["bases"]["big"]
            log = lab.run("node2", "sh", "-c", "grep -h 'base big' /run/resource-agents/basesync-*.log "
                          "/var/log/pacemaker/pacemaker.log | tail -20", check=False).stdout
            assert final["holder"] == "node3", (final, log)
            assert final["resumed_from"] > 4 * MIB, (final, log)
            assert sha256_on(lab, "node2", "big.img") == digest
        finally:
            lab.cli("on", "node1")
    finally:
        lab.shape(None)
        lab.settle()


@pytest.fixture
def small_disk_on_node2(lab):
    lab.run("node2", "mount", "-t", "tmpfs", "-o", "size=4m", "basesync-small", bl.DIRECTORY)
    try:
        yield
    finally:
        lab.run("node2", "umount", bl.DIRECTORY, check=False)
        lab.pcs("resource", "cleanup", "basesync")


def test_a_node_whose_disk_is_too_small_refuses_clearly(lab, synced, small_disk_on_node2):
    state = lab.state()
    # deb12 (8 MiB) does not fit in node2's 4 MiB: the copy is refused, the attribute withdrawn.
    bl.wait_attributes(state, "deb12", {"node2": None}, SYNC_TIMEOUT)
    deadline = time.monotonic() + SYNC_TIMEOUT
    while "not enough space" not in lab.run("node1", "crm_mon", "-1", "--output-as=xml").stdout:
        assert time.monotonic() < deadline, "no failed monitor saying 'not enough space'"
        time.sleep(1)
    listing = lab.run("node2", "find", bl.DIRECTORY, "-type", "f").stdout.split()
    assert [f for f in listing if "/.basesync/incoming/" in f or f.endswith(".img")] == [], listing


def test_a_base_an_overlay_uses_is_kept_until_the_overlay_is_gone(lab, synced):
    state = lab.state()
    lab.run("node1", "qemu-img", "create", "-q", "-f", "qcow2", f"{bl.DIRECTORY}/desk.qcow2", "64M")
    digest = bl.add_base(state, "desk.qcow2", "desk")
    bl.wait_attributes(state, "desk", {n: digest for n in NODES}, SYNC_TIMEOUT)
    lab.run("node3", "qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{bl.DIRECTORY}/desk.qcow2", "-F", "qcow2",
            f"{bl.DIRECTORY}/clone-of-desk.qcow2")
    bl.remove_base(state, "desk")
    bl.wait_attributes(state, "desk", {"node2": None}, SYNC_TIMEOUT)
    assert not bl.file_on(state, "node2", "desk.qcow2")
    # node3's worker sees the new manifest on its own next pass.
    deadline = time.monotonic() + SYNC_TIMEOUT
    while bl.status_of(state, "node3")["bases"]["desk"]["state"] != "kept":
        assert time.monotonic() < deadline, bl.status_of(state, "node3")["bases"]["desk"]
        time.sleep(1)
    assert bl.file_on(state, "node3", "desk.qcow2"), "a base an overlay uses was deleted"
    lab.run("node3", "rm", f"{bl.DIRECTORY}/clone-of-desk.qcow2")
    deadline = time.monotonic() + SYNC_TIMEOUT
    while bl.file_on(state, "node3", "desk.qcow2"):
        assert time.monotonic() < deadline, "the base stayed after its overlay was gone"
        time.sleep(1)


def test_pacemaker_keeps_a_vm_off_the_node_lacking_its_base_and_starts_it_once_verified(lab, synced):
    state = lab.state()
    bl.write_base(state, "node1", "vmbase.img", 4)
    digest = bl.add_base(state, "vmbase.img", "vmbase", ["node2"])
    bl.wait_attributes(state, "vmbase", {"node1": digest, "node2": digest}, SYNC_TIMEOUT)
    vm = "bsvm"
    argv = create_argv(vm, write_domain(state.lab, vm), meta=("allow-migrate=true", "ravada-base=vmbase"))
    lab.run("node1", *argv, "--disabled")
    try:
        lab.run("node1", "ravada-cib", "render", "base-location", f"vm={vm}", "base=vmbase", "--apply")
        lab.pcs("resource", "ban", vm, "node1")
        lab.pcs("resource", "ban", vm, "node2")
        lab.pcs("resource", "enable", vm)
        time.sleep(10)    # Pacemaker had several transitions to place it, and did not
        view = lab.view()
        assert vm not in view.resources or view.resources[vm] == [], view.resources.get(vm)
        assert "node3" not in bl.base_attributes(state, "vmbase")
        bl.add_base(state, "vmbase.img", "vmbase", ["node2", "node3"])
        assert lab.wait_started(vm, timeout=SYNC_TIMEOUT) == "node3"
        assert bl.base_attributes(state, "vmbase")["node3"] == digest
    finally:
        lab.delete_vm(vm)
