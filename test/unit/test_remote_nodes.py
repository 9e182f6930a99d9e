"""Remote nodes (pacemaker_remote) as our readers see them, on CIBs and crm_mon output captured
from a real cluster (2 corosync nodes + remote node rnode1, Pacemaker 2.1.5; lrm history
trimmed): remote_samples/online-* with rnode1 connected and not in <nodes> (no permanent
attribute yet), remote_samples/unclean-* after its pacemaker-remoted froze with fencing
enabled and no fence device (rnode1 UNCLEAN, a resource left on it).  The same readers on a
live remote node: test/placement/test_remote_live.py."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from lxml import etree

# The tree's placement package, not an installed copy (test/conftest.py puts only lib/ first).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "placement"))

from ocf_ravada import nodeops, pacemaker
from ocf_ravada.deadline import Deadline
from ocf_ravada.rbd.fence_agent import target_ips
from ocf_ravada.rbd.nodes import NodeMap
from ravada_placement.cib import cluster_from_cib
from support.stack import require_stack

SAMPLES = Path(__file__).resolve().parent / "remote_samples"


def sample(name: str) -> etree._Element:
    return etree.parse(str(SAMPLES / name)).getroot()


def add(parent: etree._Element, xml: str) -> etree._Element:
    element = etree.fromstring(xml)
    parent.append(element)
    return element


def with_vm(cib: etree._Element) -> etree._Element:
    """The captured resource vm1 made a VM for ravada-place (utilization hv_memory)."""
    cib = copy.deepcopy(cib)
    primitive = cib.find("configuration/resources/primitive[@id='vm1']")
    add(primitive, '<utilization id="vm1-u"><nvpair id="vm1-u-cpu" name="cpu" value="1"/>'
                   '<nvpair id="vm1-u-mem" name="hv_memory" value="512"/></utilization>')
    return cib


def test_a_remote_node_without_node_element_is_found_by_its_connection():
    cib = sample("online-cib.xml")
    assert [n.get("uname") for n in cib.iterfind("configuration/nodes/node")] == ["pnode1", "pnode2"]
    assert pacemaker.node_kinds(cib) == {"pnode1": "cluster", "pnode2": "cluster", "rnode1": "remote"}
    assert pacemaker.remote_connection(cib, "rnode1").get("type") == "remote"
    assert pacemaker.remote_connection(cib, "pnode1") is None


def test_guest_nodes_and_nodes_only_status_knows():
    cib = copy.deepcopy(sample("online-cib.xml"))
    add(cib.find("configuration/resources"),
        '<primitive id="guest-vm" class="ocf" provider="ravada" type="VirtualDomain">'
        '<meta_attributes id="guest-vm-meta"><nvpair id="guest-vm-rn" name="remote-node" value="guest1"/>'
        '</meta_attributes></primitive>')
    add(cib.find("status"), '<node_state remote_node="true" id="gone1" uname="gone1" in_ccm="false"/>')
    # A permanent attribute gives the remote node a <node type="remote">: still remote.
    add(cib.find("configuration/nodes"), '<node type="remote" id="rnode1" uname="rnode1"/>')
    assert pacemaker.node_kinds(cib) == {"pnode1": "cluster", "pnode2": "cluster", "rnode1": "remote",
                                         "guest1": "container", "gone1": "remote"}


def test_transient_attributes_of_a_remote_node_are_read():
    assert pacemaker.node_attributes(sample("online-cib.xml"), "ravada-test") == {"rnode1": "1"}


def test_placement_sees_the_online_remote_node_and_the_vm_on_it():
    cluster = cluster_from_cib(with_vm(sample("online-cib.xml")), sample("online-crm_mon.xml"))
    assert list(cluster.nodes) == ["pnode1", "pnode2", "rnode1"]
    assert cluster.nodes["rnode1"].unavailable is None
    assert cluster.vms["vm1"].node == "rnode1"


def test_placement_takes_an_unclean_remote_node_as_unavailable():
    cluster = cluster_from_cib(with_vm(sample("unclean-cib.xml")), sample("unclean-crm_mon.xml"))
    assert cluster.nodes["rnode1"].unavailable == "unclean (needs fencing)"
    assert cluster.nodes["pnode1"].unavailable is None


@pytest.mark.parametrize("operation, banned", [("eq", {"rnode1"}), ("ne", {"pnode1", "pnode2"})])
def test_kind_rules_tell_remote_from_cluster_nodes(operation, banned):
    cib = with_vm(sample("online-cib.xml"))
    add(cib.find("configuration/constraints"),
        f'<rsc_location id="vm1-kind" rsc="vm1"><rule id="vm1-kind-rule" score="-INFINITY">'
        f'<expression id="vm1-kind-expr" attribute="#kind" operation="{operation}" value="remote"/>'
        f'</rule></rsc_location>')
    cluster = cluster_from_cib(cib, sample("online-crm_mon.xml"))
    assert set(cluster.vms["vm1"].banned) == banned


def test_fence_rbd_finds_a_remote_nodes_ceph_addresses():
    """Set from the remote node (crm_attribute there creates <node type="remote">)."""
    cib = copy.deepcopy(sample("online-cib.xml"))
    add(cib.find("configuration/nodes"),
        '<node type="remote" id="rnode1" uname="rnode1"><instance_attributes id="nodes-rnode1">'
        '<nvpair id="nodes-rnode1-ravada-ceph-addrs" name="ravada-ceph-addrs" value="10.231.9.100 10.232.0.5"/>'
        '</instance_attributes></node>')
    assert target_ips("rnode1", NodeMap.from_cib_xml(cib)) == ("10.231.9.100", "10.232.0.5")


def test_the_connection_address_is_never_taken_for_ceph_addresses():
    """Its server is pacemaker-remoted's address, maybe not the storage network's: fencing
    the wrong IP would report success while the node still writes.  Refused instead."""
    from ocf_ravada.rbd.errors import RbdError
    with pytest.raises(RbdError, match="no Ceph client IPs known for node 'rnode1'"):
        target_ips("rnode1", NodeMap.from_cib_xml(sample("online-cib.xml")))


def test_remote_address_of_a_connection():
    connection = pacemaker.remote_connection(sample("online-cib.xml"), "rnode1")
    assert nodeops._remote_address(connection) == ("10.231.9.100", 3121)
    bare = etree.fromstring('<primitive id="r2" class="ocf" provider="pacemaker" type="remote">'
                            '<instance_attributes id="r2-ia"><nvpair id="r2-p" name="port" value="3999"/>'
                            '</instance_attributes></primitive>')
    assert nodeops._remote_address(bare) == ("r2", 3999)
    bare.find("instance_attributes/nvpair").set("value", "x")
    with pytest.raises(nodeops.OpsError, match="not a number"):
        nodeops._remote_address(bare)


def test_shutdown_refuses_a_guest_node_before_touching_anything(tmp_path, monkeypatch):
    require_stack("cibadmin on a CIB file", "cibadmin")
    cib = copy.deepcopy(sample("online-cib.xml"))
    add(cib.find("configuration/resources"),
        '<primitive id="guest-vm" class="ocf" provider="ravada" type="VirtualDomain">'
        '<meta_attributes id="guest-vm-meta"><nvpair id="guest-vm-rn" name="remote-node" value="guest1"/>'
        '</meta_attributes></primitive>')
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(cib))
    monkeypatch.setenv("CIB_file", str(path))
    with pytest.raises(nodeops.OpsError, match="guest node"):
        nodeops.shutdown("guest1", Deadline(30), shell=None)
    assert path.read_bytes() == etree.tostring(cib)


@pytest.fixture
def sim_with_remote(tmp_path, monkeypatch):
    """A simulated cluster (crm_simulate on a CIB file): 2 full nodes, remote node rnode1
    connected by an ocf:pacemaker:remote resource, a VM on it."""
    require_stack("a simulated cluster", "crm_simulate", "crm_mon", "cibadmin", "crm_resource")
    from support.simcluster import SimCluster
    sim = SimCluster(tmp_path, {"node1": (8, 16384), "node2": (8, 16384)})
    monkeypatch.setenv("CIB_file", str(sim.path))
    pacemaker.create_element("resources", etree.fromstring(
        '<primitive id="rnode1" class="ocf" provider="pacemaker" type="remote">'
        '<instance_attributes id="rnode1-ia"><nvpair id="rnode1-server" name="server" value="192.0.2.7"/>'
        '</instance_attributes></primitive>'), Deadline(30))
    sim.start()
    for name, value in (("cpu", "8"), ("hv_memory", "16384")):
        pacemaker.set_node_utilization(name, value, Deadline(30), node="rnode1")
    sim.add_vm("vmr", memory=1024)
    pacemaker.create_element("constraints", etree.fromstring(
        '<rsc_location id="vmr-on-rnode1" rsc="vmr" node="rnode1" score="INFINITY"/>'), Deadline(30))
    sim.settle()
    assert sim.where().get("vmr") == ["rnode1"], sim.where()
    return sim


def test_emergency_shutdown_powers_off_remote_nodes_without_stopping_a_stack_there(sim_with_remote, tmp_path,
                                                                                   monkeypatch):
    from ocf_ravada import emergency
    from ocf_ravada.nodeshell import NodeShell
    monkeypatch.setattr(emergency, "POLL", 0.2)
    log = tmp_path / "node-commands"
    shell_script = tmp_path / "fake-shell"
    shell_script.write_text(f'#!/bin/sh\ntouch {log}\n'
                            'case "$2 $3" in\n'
                            f'  "crmadmin --pacemakerd") grep -qx "$1 pacemakerd --shutdown" {log} && exit 102; exit 0;;\n'
                            f'  "corosync-cfgtool -s") grep -qx "$1 corosync-cfgtool -H" {log} && exit 1; exit 0;;\n'
                            'esac\n'
                            f'echo "$@" >> {log}\n')
    power_script = tmp_path / "fake-power"
    power_script.write_text(f'#!/bin/sh\necho "$1 power-off" >> {log}\n')
    for script in (shell_script, power_script):
        script.chmod(0o755)
    shell = NodeShell(local_node="not-a-member", shell=f"{shell_script} {{node}}", poweroff=f"{power_script} {{node}}")
    lines: list[str] = []
    job = emergency.EmergencyShutdown(300, shell, lines.append, poweroff=True, tick=sim_with_remote.settle)
    assert any("remote nodes rnode1" in line for line in job.describe()), job.describe()
    assert job.run()
    assert "vmr" not in sim_with_remote.where()
    recorded = log.read_text().splitlines()
    assert not [line for line in recorded if line.startswith("rnode1 ") and "power-off" not in line], recorded
    powered = [line.split()[0] for line in recorded if line.endswith("power-off")]
    assert powered[0] == "rnode1" and sorted(powered) == ["node1", "node2", "rnode1"], recorded
    stack_stops = [i for i, line in enumerate(recorded) if "--shutdown" in line or "-H" in line]
    assert max(stack_stops) < recorded.index("rnode1 power-off"), recorded



def test_simulating_a_saved_configuration_brings_up_only_cluster_nodes(tmp_path, monkeypatch):
    """crm_simulate --node-up on a remote node that has no <node> takes it for a cluster node
    and computes no transition (seen with Pacemaker 2.1.5): the remote nodes come up when the
    simulation starts their connections."""
    from ravada_placement import cli
    cib = copy.deepcopy(sample("online-cib.xml"))
    cib.remove(cib.find("status"))
    for name in ("pnode1", "pnode2"):
        node = cib.find(f"configuration/nodes/node[@uname='{name}']")
        add(node, f'<utilization id="{name}-u"><nvpair id="{name}-u1" name="cpu" value="4"/>'
                  f'<nvpair id="{name}-u2" name="hv_memory" value="4096"/></utilization>')
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(with_vm(cib)))
    brought_up = []
    monkeypatch.setattr(cli, "simulate", lambda _cib, nodes_up: brought_up.extend(nodes_up) or {})
    assert cli.main(["place", "--simulate", "--cib", str(path)]) == 0
    assert brought_up == ["pnode1", "pnode2"]
