"""ravada-place --apply against a REAL Pacemaker: a 2-node corosync/pacemakerd cluster in
private namespaces (minicluster.py), with ocf:pacemaker:Dummy resources carrying VM
utilization.  Pacemaker must actually start and move them where the plan says."""
from __future__ import annotations

import psutil
import pytest
from lxml import etree

from minicluster import MiniCluster
from placement_helpers import TOOL
from support.stack import require_stack

pytestmark = [pytest.mark.slow, pytest.mark.pacemaker]

NODE_SIZE = {"pnode1": (12, 16384), "pnode2": (12, 16384)}


@pytest.fixture(scope="module")
def cluster():
    require_stack("a real Pacemaker cluster", "corosync", "pacemakerd", "cibadmin", "crm_mon", "crm_diff",
                  "unshare", "nsenter", "ip")
    mini = MiniCluster(2)
    mini.start()
    try:
        for node, (cpu, memory) in NODE_SIZE.items():
            for name, value in (("cpu", cpu), ("hv_memory", memory)):
                mini.run(["crm_attribute", "--node", node, "--utilization", "--name", name, "--update", str(value)])
        mini.run(["crm_attribute", "--node", "pnode2", "--name", "ravada-base-w10", "--update", "1"])
        mini.run(["crm_attribute", "--type", "crm_config", "--name", "placement-strategy", "--update", "utilization"])
        # Running VMs stay put unless a constraint says otherwise (our score 1000 beats it).
        mini.run(["crm_attribute", "--type", "rsc_defaults", "--name", "resource-stickiness", "--update", "100"])
        yield mini
    finally:
        mini.stop()


def add_vm(cluster: MiniCluster, name: str, cpu: int, memory: int, base: str | None = None) -> None:
    primitive = etree.Element("primitive", id=name, type="Dummy", provider="pacemaker", **{"class": "ocf"})
    meta = etree.SubElement(primitive, "meta_attributes", id=f"{name}-meta")
    etree.SubElement(meta, "nvpair", id=f"{name}-target-role", name="target-role", value="Stopped")
    if base:
        etree.SubElement(meta, "nvpair", id=f"{name}-base", name="ravada-base", value=base)
    util = etree.SubElement(primitive, "utilization", id=f"{name}-util")
    etree.SubElement(util, "nvpair", id=f"{name}-cpu", name="cpu", value=str(cpu))
    etree.SubElement(util, "nvpair", id=f"{name}-mem", name="hv_memory", value=str(memory))
    cluster.run(["cibadmin", "--create", "--scope", "resources", "--xml-text",
                 etree.tostring(primitive, encoding="unicode")])


def start_all(cluster: MiniCluster, names: list[str]) -> None:
    for name in names:
        cluster.run(["crm_resource", "--resource", name, "--meta", "--delete-parameter", "target-role"])
    cluster.settle()


def place(cluster: MiniCluster, *args: str, check: bool = True):
    proc = cluster.run(["/usr/bin/python3", str(TOOL), *args], check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def our_constraints(cluster: MiniCluster) -> dict[str, tuple[str, str]]:
    constraints = etree.fromstring(cluster.run(["cibadmin", "--query", "--scope", "constraints"]).stdout.encode())
    return {el.get("id"): (el.get("node"), el.get("score")) for el in constraints.iter("rsc_location")
            if el.get("id").startswith("ravada-place-")}


def test_apply_place_then_pacemaker_starts_vms_where_planned(cluster):
    vms = {"vm-a": (2, 4096, None), "vm-b": (2, 4096, None), "vm-c": (1, 2048, "w10"), "vm-d": (4, 4096, None)}
    for name, (cpu, memory, base) in vms.items():
        add_vm(cluster, name, cpu, memory, base)
    out = place(cluster, "place", "--apply").stdout
    planned = dict(line.split(": ") for line in out.splitlines() if line.startswith("vm-"))
    assert planned["vm-c"] == "pnode2"          # the only node with base w10
    assert set(our_constraints(cluster)) == {f"ravada-place-{vm}" for vm in vms}
    start_all(cluster, list(vms))
    where = cluster.resource_nodes()
    assert {vm: where[vm] for vm in vms} == planned


def test_drain_moves_every_vm_off_the_node(cluster):
    before = cluster.resource_nodes()
    leaving = sorted(vm for vm, node in before.items() if node == "pnode1")
    assert leaving
    out = place(cluster, "drain", "pnode1", "--apply").stdout
    assert all(f"{vm}: pnode1 -> pnode2" in out for vm in leaving)
    cluster.settle()
    assert set(cluster.resource_nodes().values()) == {"pnode2"}
    assert our_constraints(cluster)[f"ravada-place-{leaving[0]}-avoid-pnode1"] == ("pnode1", "-INFINITY")


def test_rebalance_respects_the_drain_until_cleared_then_moves_vms_back(cluster):
    assert "nothing to do" in place(cluster, "rebalance", "--max-moves", "2", "--apply").stdout
    place(cluster, "clear", "--apply")
    cluster.settle()
    assert our_constraints(cluster) == {}
    assert set(cluster.resource_nodes().values()) == {"pnode2"}     # stickiness keeps them
    proc = place(cluster, "rebalance", "--max-moves", "2", "--apply")
    moves = [line for line in proc.stdout.splitlines() if line.startswith("vm-")]
    assert len(moves) == 2 and all("pnode2 -> pnode1  (imbalance -" in line for line in moves), proc.stdout
    cluster.settle()
    where = cluster.resource_nodes()
    for line in moves:
        assert where[line.split(":")[0]] == "pnode1"


def test_incomplete_plan_applies_nothing(cluster):
    before = our_constraints(cluster)
    add_vm(cluster, "vm-huge", 1, 999999)
    proc = place(cluster, "place", "--apply", check=False)
    assert proc.returncode == 3 and "vm-huge: CANNOT PLACE: larger than any node" in proc.stdout
    assert our_constraints(cluster) == before
    cluster.run(["cibadmin", "--delete", "--xml-text", '<primitive id="vm-huge"/>'])


def test_apply_keeps_changes_made_after_the_plan_was_read(cluster):
    script = f"""
import sys
sys.path.insert(0, {str(TOOL.parent.parent / 'lib')!r})
sys.path.insert(0, {str(TOOL.parent.parent / 'placement')!r})
from ravada_placement import cib, constraints, pacemaker
old = cib.load_cib(None)
new = constraints.with_locations(old, [constraints.Location('ravada-place-vm-a', 'vm-a', 'pnode1', '7')], {{'vm-a'}})
pacemaker.run(['crm_attribute', '--type', 'crm_config', '--name', 'cluster-recheck-interval', '--update', '7min'])
pacemaker.apply(old, new)
"""
    cluster.run(["/usr/bin/python3", "-c", script])
    assert our_constraints(cluster)["ravada-place-vm-a"] == ("pnode1", "7")
    value = cluster.run(["crm_attribute", "--type", "crm_config", "--name", "cluster-recheck-interval",
                         "--query", "--quiet"]).stdout.strip()
    assert value == "7min"


def test_clear_removes_only_our_constraints(cluster):
    cluster.run(["cibadmin", "--create", "--scope", "constraints", "--xml-text",
                 '<rsc_location id="admin-keep" rsc="vm-a" node="pnode1" score="10"/>'])
    place(cluster, "clear", "--apply")
    assert our_constraints(cluster) == {}
    constraints = cluster.run(["cibadmin", "--query", "--scope", "constraints"]).stdout
    assert 'id="admin-keep"' in constraints


def test_nodeinfo_publishes_into_the_live_cib(cluster):
    """ocf:ravada:nodeinfo run as pacemaker-execd runs it, writing through the live CIB
    and attrd (no libvirtd in this cluster: it publishes what psutil measures)."""
    agent = str(TOOL.parent.parent / "agents" / "nodeinfo")
    env = {"OCF_RESKEY_crm_feature_set": "3.16.2", "OCF_RESKEY_CRM_meta_on_node": "pnode2",
           "OCF_RESOURCE_INSTANCE": "nodeinfo:1", "OCF_RESKEY_reserve_memory": "256",
           "OCF_RESKEY_cpu_ratio": "8", "OCF_RESKEY_storage_paths": "/tmp",
           "OCF_RESKEY_hypervisor": "qemu:///system?socket=/nonexistent/libvirt-sock"}
    started = cluster.run(["/usr/bin/python3", agent, "start"], env=env, check=False)
    assert started.returncode == 0, started.stderr

    def query(name: str, *extra: str) -> int:
        return int(cluster.run(["crm_attribute", "--node", "pnode2", "--name", name, "--query", "--quiet",
                                *extra]).stdout.strip())

    assert query("hv_memory", "--utilization") == psutil.virtual_memory().total // 2**20 - 256
    assert query("cpu", "--utilization") == psutil.cpu_count() * 8
    assert query("ravada-cpus", "--lifetime", "reboot") == psutil.cpu_count()
    assert query("ravada-storage-full", "--lifetime", "reboot") in (0, 1)
    assert cluster.run(["/usr/bin/python3", agent, "stop"], env=env, check=False).returncode == 0
