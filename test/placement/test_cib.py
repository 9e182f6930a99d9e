"""Reading real CIBs and checking the generated constraints with Pacemaker's own tools
(crm_verify, crm_simulate, crm_mon on saved CIBs; no daemons needed)."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from lxml import etree

from placement_helpers import require_pacemaker_tools, require_tools, run_tool
from ravada_placement import cib as cibmod
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node



@pytest.fixture(autouse=True)
def _pacemaker_tools() -> None:
    require_pacemaker_tools()


def save(cib: etree._Element, path) -> str:
    path.write_bytes(etree.tostring(cib))
    return str(path)


def lab_cluster() -> Cluster:
    nodes = [Node("n1", 8, 16384, frozenset({"w10"})), Node("n2", 16, 32768, frozenset({"w10", "deb"})),
             Node("n3", 8, 16384, frozenset({"deb"}))]
    vms = [VM("r1", 2, 4096, user="ann", base="w10", node="n1"), VM("r2", 2, 4096, node="n2"),
           VM("a2", 1, 2048, user="ann", base="w10"), VM("b1", 4, 8192, user="bob", base="deb"),
           VM("b2", 2, 4096, user="bob", base="deb"), VM("c1", 2, 2048)]
    return Cluster({n.name: n for n in nodes}, {v.name: v for v in vms})


def verify(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["crm_verify", "--verbose", "--xml-file", path], capture_output=True, text=True)


def test_cib_is_read_with_running_vms_bases_and_users(tmp_path):
    path = save(cibgen.live_like_cib(lab_cluster()), tmp_path / "cib.xml")
    out = run_tool("place", "--cib", path, "--same-user", "--explain", check=True).stdout
    # a2 belongs to ann, whose r1 runs on n1 (which has w10): same-user puts it there.
    assert "a2: n1" in out.splitlines()
    assert "n1                   excluded: base 'deb' not present" in out
    assert {line.split(": ")[0] for line in out.splitlines() if ": n" in line} == {"a2", "b1", "b2", "c1"}


@pytest.mark.parametrize("policy", ["balanced", "pack", "ravada"])
def test_generated_constraints_pass_crm_verify_and_crm_simulate_follows_the_plan(tmp_path, policy):
    path = save(cibgen.live_like_cib(lab_cluster(), "utilization"), tmp_path / "cib.xml")
    out = tmp_path / "new.xml"
    proc = run_tool("place", "--cib", path, "--policy", policy, "--simulate", "--write-cib", str(out), check=True)
    assert verify(str(out)).returncode == 0, verify(str(out)).stdout
    planned = [line for line in proc.stdout.splitlines() if line.startswith("  ") and "planned" in line]
    assert len(planned) == 4 and all(line.endswith("as planned") for line in planned), proc.stdout
    assert len(etree.parse(str(out)).findall("//rsc_location")) == 4


def test_pacemaker_balanced_strands_a_vm_that_our_plan_places(tmp_path):
    # The Pacemaker Explained example: greedy CIB order leaves rsc-large stopped.
    nodes = [Node("node1", 2, 2048), Node("node2", 4, 4096)]
    vms = [VM("rsc-small", 1, 1024), VM("rsc-medium", 2, 2048), VM("rsc-large", 3, 3072)]
    cib = cibgen.live_like_cib(Cluster({n.name: n for n in nodes}, {v.name: v for v in vms}), "balanced")
    path = save(cib, tmp_path / "cib.xml")
    simulated = subprocess.run(["crm_simulate", "--xml-file", path, "--simulate"], capture_output=True, text=True)
    assert "rsc-large" in simulated.stdout and "Start      rsc-large" not in simulated.stdout
    proc = run_tool("place", "--cib", path, "--simulate", check=True)
    for vm in ("rsc-small", "rsc-medium", "rsc-large"):
        assert any(line.split()[:1] == [vm] and line.endswith("as planned") for line in proc.stdout.splitlines()), \
            proc.stdout


def test_only_our_own_constraints_are_replaced(tmp_path):
    cib = cibgen.live_like_cib(lab_cluster())
    constraints = cib.find("configuration/constraints")
    etree.SubElement(constraints, "rsc_location", id="admin-prefers", rsc="c1", node="n3", score="50")
    etree.SubElement(constraints, "rsc_location", id="ravada-place-c1", rsc="c1", node="n1", score="1000")
    etree.SubElement(constraints, "rsc_location", id="ravada-place-b2", rsc="b2", node="n3", score="1000")
    out = tmp_path / "new.xml"
    pcs = run_tool("place", "c1", "--cib", save(cib, tmp_path / "cib.xml"), "--format", "pcs",
                   "--write-cib", str(out), check=True).stdout.splitlines()
    assert pcs[0] == "pcs constraint delete ravada-place-c1"
    locations = {el.get("id"): el.get("node") for el in etree.parse(str(out)).iter("rsc_location")}
    assert locations["admin-prefers"] == "n3" and locations["ravada-place-b2"] == "n3"
    assert set(locations) == {"admin-prefers", "ravada-place-b2", "ravada-place-c1"}
    cleared = tmp_path / "cleared.xml"
    run_tool("clear", "--cib", str(out), "--write-cib", str(cleared), check=True)
    assert [el.get("id") for el in etree.parse(str(cleared)).iter("rsc_location")] == ["admin-prefers"]


def test_admin_bans_and_absent_base_values_are_respected(tmp_path):
    cib = cibgen.live_like_cib(lab_cluster())
    etree.SubElement(cib.find("configuration/constraints"), "rsc_location", id="cli-ban-b1-on-n2",
                     rsc="b1", node="n2", score="-INFINITY")
    for nvpair in cib.iterfind("configuration/nodes/node[@uname='n3']/instance_attributes/nvpair"):
        nvpair.set("value", "0")       # basesync withdrew the base
    proc = run_tool("place", "b1", "--cib", save(cib, tmp_path / "cib.xml"), "--explain")
    assert proc.returncode == 3
    assert "n2                   excluded: banned" in proc.stdout
    assert "n3                   excluded: base 'deb' not present" in proc.stdout


def test_vm_size_is_read_from_the_domain_xml_without_utilization(tmp_path):
    domain = tmp_path / "vm.xml"
    domain.write_text("<domain type='kvm'><name>vmx</name><vcpu>3</vcpu><memory unit='GiB'>5</memory></domain>")
    cluster = Cluster({"n1": Node("n1", 2, 65536), "n2": Node("n2", 4, 65536)}, {})
    cib = cibgen.live_like_cib(cluster)
    primitive = etree.SubElement(cib.find("configuration/resources"), "primitive", id="vmx", type="VirtualDomain",
                                 provider="heartbeat", **{"class": "ocf"})
    attrs = etree.SubElement(primitive, "instance_attributes", id="vmx-ia")
    etree.SubElement(attrs, "nvpair", id="vmx-config", name="config", value=str(domain))
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--format", "json", check=True).stdout
    assert '"to": "n2"' in out
    domain.write_text("<domain><name>vmx</name></domain>")
    proc = run_tool("place", "--cib", str(tmp_path / "cib.xml"))
    assert proc.returncode == 1 and "lacks <memory>" in proc.stderr


@pytest.mark.parametrize("vcpu, memory, size", [
    ("", "<memory unit='KiB'>2098175</memory>", (1, 2048)),         # libvirt's default: 1 vCPU
    ("<vcpu current='2'>6</vcpu>", "<memory unit='b'>2147482623</memory>", (2, 2047)),
    ("<vcpu>3</vcpu>", "<memory unit='MB'>1000</memory>", (3, 953)),   # rounded down, as the agent
])
def test_domain_xml_size_is_counted_as_the_vm_agent_publishes_it(tmp_path, vcpu, memory, size):
    domain = tmp_path / "vm.xml"
    domain.write_text(f"<domain type='kvm'><name>vmx</name>{vcpu}{memory}</domain>")
    cluster = Cluster({"n1": Node("n1", 8, 65536)}, {})
    cib = cibgen.live_like_cib(cluster)
    primitive = etree.SubElement(cib.find("configuration/resources"), "primitive", id="vmx", type="VirtualDomain",
                                 provider="heartbeat", **{"class": "ocf"})
    attrs = etree.SubElement(primitive, "instance_attributes", id="vmx-ia")
    etree.SubElement(attrs, "nvpair", id="vmx-config", name="config", value=str(domain))
    _, read, _ = cibmod.read_cluster(save(cib, tmp_path / "cib.xml"))
    assert (read.vms["vmx"].cpu, read.vms["vmx"].memory) == size


def test_configuration_without_status_plans_as_if_all_nodes_were_up(tmp_path):
    cib = cibgen.cib_for(lab_cluster())
    proc = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--simulate", check=True)
    assert "as planned" in proc.stdout and "(planned" not in proc.stdout


@pytest.mark.parametrize("content, message", [
    (b"<cib><configuration>", "not well-formed"),
    (b"<html/>", "not a Pacemaker CIB"),
])
def test_malformed_cib_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.xml"
    path.write_bytes(content)
    proc = run_tool("place", "--cib", str(path))
    assert proc.returncode == 1 and message in proc.stderr


def test_negative_utilization_in_the_cib_is_refused(tmp_path):
    cib = cibgen.cib_for(lab_cluster())
    cib.find("configuration/resources/primitive/utilization/nvpair[@name='hv_memory']").set("value", "-1")
    proc = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"))
    assert proc.returncode == 1 and "negative" in proc.stderr


def test_a_drained_node_takes_no_vm_until_cleared(tmp_path):
    path = save(cibgen.live_like_cib(lab_cluster()), tmp_path / "cib.xml")
    drained = tmp_path / "drained.xml"
    run_tool("drain", "n1", "--cib", path, "--write-cib", str(drained), check=True)
    out = run_tool("place", "--cib", str(drained), "--explain", check=True).stdout
    assert "n1                   excluded: drained by ravada-place" in out
    assert "ravada-place-r1-avoid-n1" in drained.read_text()
    # Placing other VMs keeps the drain's ban; only clear removes it.
    placed = tmp_path / "placed.xml"
    run_tool("place", "--cib", str(drained), "--write-cib", str(placed), check=True)
    assert "ravada-place-r1-avoid-n1" in placed.read_text()
    cleared = tmp_path / "cleared.xml"
    run_tool("clear", "r1", "--cib", str(placed), "--write-cib", str(cleared), check=True)
    assert "avoid" not in cleared.read_text()
    assert "drained" not in run_tool("place", "--cib", str(cleared), "--explain", check=True).stdout


@pytest.mark.parametrize("tool", ["pcs", "crm"])
def test_pcs_and_crm_commands_produce_the_same_constraints_as_the_xml(tmp_path, tool):
    require_pacemaker_tools()
    require_tools(tool)
    path = save(cibgen.live_like_cib(lab_cluster()), tmp_path / "cib.xml")
    expected = tmp_path / "expected.xml"
    run_tool("drain", "n2", "--cib", path, "--write-cib", str(expected), check=True)
    commands = run_tool("drain", "n2", "--cib", path, "--format", tool, check=True).stdout.splitlines()
    for command in commands:
        argv = shlex.split(command)
        env = dict(os.environ)
        if tool == "pcs":
            argv[1:1] = ["-f", path]
        else:
            env["CIB_file"] = path
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=60)

    def ours(file) -> set[tuple]:
        return {(el.get("id"), el.get("rsc"), el.get("node"), el.get("score"))
                for el in etree.parse(str(file)).iter("rsc_location") if el.get("id").startswith("ravada-place-")}

    assert ours(path) == ours(expected) and ours(path)


def test_standby_and_offline_nodes_take_no_vm(tmp_path):
    cib = cibgen.live_like_cib(lab_cluster())
    node = cib.find("configuration/nodes/node[@uname='n2']")
    attrs = node.find("instance_attributes")
    etree.SubElement(attrs, "nvpair", id="n2-standby", name="standby", value="on")
    state = cib.find("status/node_state[@uname='n3']")
    state.set("crmd", "offline")
    state.set("in_ccm", "false")
    state.set("join", "down")
    proc = run_tool("place", "c1", "--cib", save(cib, tmp_path / "cib.xml"), "--explain", check=True)
    assert "n2                   excluded: in standby" in proc.stdout
    assert "n3                   excluded: offline" in proc.stdout
    assert "c1: n1" in proc.stdout
