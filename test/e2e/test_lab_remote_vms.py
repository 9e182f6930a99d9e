"""Our agents and tools on pacemaker_remote nodes, in a lab of 3 full + 2 remote nodes:
ocf:ravada:VirtualDomain starts a VM on a remote node and live-migrates it remote -> remote
and remote -> full (its utilization written from the remote node); ocf:ravada:nodeinfo
publishes from remote nodes; ravada-place places onto a remote node; ravada-node drains one;
a remote node cut off the network is fenced before its VM starts elsewhere (QEMU never on
two nodes); a full node hosting a remote connection dies and the connection moves without
restarting the remote node's VM.  (A killed remote node: test_lab_remote.py.)"""

import time

import libvirt
import pytest
from lxml import etree

from ravada_lab import vms
from ravada_lab.domains import write_domain

from lab_support import SESSION, QemuWatch, running_lab

pytestmark = pytest.mark.lab

REMOTES = ["remote1", "remote2"]
FULL = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def rlab(installed, request):
    with running_lab(f"e2e-{SESSION}-rv", request, len(FULL), len(REMOTES)) as lab:
        lab.settle()
        yield lab


def domain_state(lab, node: str, vm: str) -> tuple[int, int]:
    conn = vms.libvirt_connection(lab.state(), node)
    try:
        state, reason = conn.lookupByName(vm).state()
        return state, reason
    finally:
        conn.close()


def qemu_pid(lab, node: str, vm: str) -> int:
    conn = vms.libvirt_connection(lab.state(), node)
    try:
        return int(etree.fromstring(conn.lookupByName(vm).XMLDesc(0).encode()).get("id"))
    finally:
        conn.close()


def assert_arrived_live(lab, watch: QemuWatch, vm: str, source: str, target: str) -> None:
    seen = watch.nodes_of(vm)
    assert seen and all(seen), f"{vm} had no QEMU process anywhere at some point: it stopped"
    assert sorted([source, target]) in seen, f"{vm} never had QEMU on {source} and {target}"
    assert seen[-1] == [target], f"{vm} QEMU ends on {seen[-1]}, expected only {target}"
    assert domain_state(lab, target, vm) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)


def assert_never_twice(watch: QemuWatch, vm: str) -> None:
    doubled = [nodes for nodes in watch.nodes_of(vm) if len(nodes) > 1]
    assert not doubled, f"{vm} had QEMU processes on several nodes at once: {doubled[:3]}"


def create_disabled(lab, name: str, *meta: str) -> None:
    config = write_domain(lab.layout, name)
    lab.run(FULL[0], *vms.create_argv(name, config, meta=("allow-migrate=true", *meta)), "--disabled")


def cib(lab) -> etree._Element:
    return etree.fromstring(lab.run(FULL[0], "cibadmin", "--query").stdout.encode())


def utilization_of(lab, resource: str) -> dict[str, str]:
    return {nv.get("name"): nv.get("value") for nv in
            cib(lab).iterfind(f"configuration/resources//primitive[@id='{resource}']/utilization/nvpair")}


def node_values(lab, node: str) -> dict[str, str]:
    root = cib(lab)
    values = {}
    for path in (f"configuration/nodes/node[@uname='{node}']/utilization/nvpair",
                 f"configuration/nodes/node[@uname='{node}']/instance_attributes/nvpair",
                 f"status/node_state[@uname='{node}']/transient_attributes/instance_attributes/nvpair"):
        values.update({nv.get("name"): nv.get("value") for nv in root.iterfind(path)})
    return values


def test_vm_on_a_remote_node_live_migrates_to_remote_and_full_nodes(rlab):
    lab = rlab
    create_disabled(lab, "vmrem")
    try:
        assert utilization_of(lab, "vmrem") == {}
        lab.pcs("constraint", "location", "vmrem", "prefers", "remote1=INFINITY")
        lab.pcs("resource", "enable", "vmrem")
        assert lab.wait_started("vmrem") == "remote1"
        assert vms.qemu_nodes(lab.state()).get("vmrem") == ["remote1"]
        # Written by the agent's start on remote1, through pacemaker-remoted's proxy.
        lab.wait(lambda _v: {"cpu", "hv_memory"} <= set(utilization_of(lab, "vmrem")),
                 "vmrem's utilization set from remote1", timeout=30)
        lab.pcs("constraint", "delete", "location-vmrem-remote1-INFINITY")
        for source, target in (("remote1", "remote2"), ("remote2", "node2")):
            with QemuWatch(lab) as watch:
                lab.pcs("resource", "move", "vmrem", target)
                assert lab.wait_started("vmrem", not_on=(source,)) == target
            lab.pcs("resource", "clear", "vmrem")
            assert_arrived_live(lab, watch, "vmrem", source, target)
    finally:
        lab.delete_vm("vmrem")


def test_nodeinfo_on_remote_nodes_and_place_onto_one(rlab):
    """The nodeinfo clone runs on every node, remote ones included, and publishes there;
    ravada-place puts a VM whose base only remote2 holds on remote2, and Pacemaker starts it
    there."""
    lab = rlab
    lab.pcs("resource", "create", "info", "ocf:ravada:nodeinfo", "clone")
    create_disabled(lab, "vmbase", "ravada-base=b1")
    try:
        wanted = {"cpu", "hv_memory", "host_memory", "ravada-cpus", "ravada-memory-total"}
        lab.wait(lambda _v: all(wanted <= set(node_values(lab, n)) for n in FULL + REMOTES),
                 "nodeinfo's values on every node", timeout=90)
        lab.run(FULL[0], "crm_attribute", "--node", "remote2", "--name", "ravada-base-b1", "--update", "1")
        lab.run(FULL[0], "crm_attribute", "--type", "crm_config", "--name", "placement-strategy",
                "--update", "utilization")
        explained = lab.run(FULL[0], "ravada-place", "place", "--explain", "vmbase").stdout
        for node in REMOTES:
            assert node in explained, explained
        out = lab.run(FULL[0], "ravada-place", "place", "--apply", "vmbase").stdout
        assert "vmbase: remote2" in out, out
        lab.pcs("resource", "enable", "vmbase")
        assert lab.wait_started("vmbase") == "remote2"
        assert vms.qemu_nodes(lab.state()).get("vmbase") == ["remote2"]
    finally:
        lab.run(FULL[0], "ravada-place", "clear", check=False)
        lab.delete_vm("vmbase")
        lab.pcs("resource", "delete", "info")
        lab.run(FULL[0], "crm_attribute", "--node", "remote2", "--name", "ravada-base-b1", "--delete")
        lab.run(FULL[0], "crm_attribute", "--type", "crm_config", "--name", "placement-strategy", "--delete")


def test_drain_a_remote_node_by_live_migration(rlab):
    lab = rlab
    create_disabled(lab, "vmdrain")
    try:
        lab.pcs("constraint", "location", "vmdrain", "prefers", "remote2=100")
        lab.pcs("resource", "enable", "vmdrain")
        assert lab.wait_started("vmdrain") == "remote2"
        with QemuWatch(lab) as watch:
            done = lab.run(FULL[0], "ravada-node", "drain", "remote2", "--timeout", "120")
            target = lab.wait_started("vmdrain", not_on=("remote2",))
        assert "vmdrain: moved to" in done.stdout, done.stdout
        assert_arrived_live(lab, watch, "vmdrain", "remote2", target)
        assert "ravada-drained" in node_values(lab, "remote2")
        lab.run(FULL[0], "ravada-node", "undrain", "remote2")
        assert "ravada-drained" not in node_values(lab, "remote2")
    finally:
        lab.delete_vm("vmdrain")


def test_cut_remote_node_is_fenced_before_its_vm_runs_elsewhere(rlab):
    lab = rlab
    create_disabled(lab, "vmcut")
    try:
        lab.pcs("constraint", "location", "vmcut", "prefers", "remote1=100")
        lab.pcs("resource", "enable", "vmcut")
        assert lab.wait_started("vmcut") == "remote1"
        lab.pcs("constraint", "delete", "location-vmcut-remote1-100")
        with QemuWatch(lab) as watch:
            wall = time.time()
            lab.cli("cut", "remote1")
            survivor = lab.wait_started("vmcut", not_on=("remote1",))
            lab.settle()
        assert lab.power_ops("remote1", wall), "remote1 was not power-cycled by fence_ravada_lab"
        assert [e for e in lab.fence_events("remote1") if e.get("status") == "success"]
        assert_never_twice(watch, "vmcut")
        assert vms.qemu_nodes(lab.state()).get("vmcut") == [survivor]
        assert not lab.state().data["nodes"]["remote1"]["cut"]
    finally:
        lab.settle()
        lab.delete_vm("vmcut")


def test_full_node_hosting_a_connection_dies_and_the_vm_keeps_running(rlab):
    lab = rlab
    create_disabled(lab, "vmkeep")
    try:
        lab.pcs("constraint", "location", "vmkeep", "prefers", "remote2=INFINITY")
        lab.pcs("resource", "enable", "vmkeep")
        assert lab.wait_started("vmkeep") == "remote2"
        host = lab.view().resources["remote2"][0]
        assert host in FULL
        pid = qemu_pid(lab, "remote2", "vmkeep")
        with QemuWatch(lab) as watch:
            wall = time.time()
            lab.cli("kill", host)
            lab.wait(lambda v: v.roles.get("remote2") == "Started" and v.resources["remote2"][0] not in (host,)
                     and host not in v.online, f"remote2's connection moved off {host}")
            lab.settle()
        assert lab.power_ops(host, wall), f"{host} was not fenced"
        assert not lab.power_ops("remote2", wall), "remote2 was fenced although only its connection host died"
        assert set(tuple(nodes) for nodes in watch.nodes_of("vmkeep")) == {("remote2",)}
        assert qemu_pid(lab, "remote2", "vmkeep") == pid
        assert domain_state(lab, "remote2", "vmkeep") == (libvirt.VIR_DOMAIN_RUNNING,
                                                         libvirt.VIR_DOMAIN_RUNNING_BOOTED)
    finally:
        lab.settle()
        lab.delete_vm("vmkeep")
