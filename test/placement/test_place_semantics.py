"""What Pacemaker respects, ravada-place respects: groups, clones, colocations, pattern and
rule locations, the failure map, stickiness, priority.  Each plan is checked against
Pacemaker's own scheduler (crm_simulate) on the same CIB."""
from __future__ import annotations

import subprocess

from lxml import etree

import pytest

from placement_helpers import require_pacemaker_tools, run_tool
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node


@pytest.fixture(autouse=True)
def _pacemaker_tools() -> None:
    require_pacemaker_tools()


def cluster(nodes: list[Node], vms: list[VM]) -> Cluster:
    return Cluster({n.name: n for n in nodes}, {v.name: v for v in vms})


def save(cib: etree._Element, path) -> str:
    path.write_bytes(etree.tostring(cib))
    return str(path)


def simulated(stdout: str) -> dict[str, str]:
    """resource -> node (or Stopped) from --simulate's listing; every planned line must say
    'as planned'."""
    result = {}
    lines = stdout.split("simulation (crm_simulate):")[1].splitlines()[1:]
    for line in lines:
        parts = line.split()
        result[parts[0]] = parts[1]
        if "planned" in line:
            assert line.endswith("as planned"), stdout
    return result


def planned(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines()
                if ": " in line and not line.startswith((" ", "bound:", "left out:", "not moved"))
                and "CANNOT" not in line)


def util_cib(c: Cluster) -> etree._Element:
    return cibgen.live_like_cib(c, "utilization")


def test_a_group_is_placed_as_one_unit_with_the_sum_of_its_members(tmp_path):
    # Each member alone fits n1; both together only n2 (Pacemaker would start them apart
    # from each other if they were not grouped).
    c = cluster([Node("n1", 4, 4096), Node("n2", 4, 8192)], [VM("g-disk", 1, 3072), VM("g-vm", 2, 3072)])
    cib = util_cib(c)
    resources = cib.find("configuration/resources")
    group = etree.SubElement(resources, "group", id="desk")
    for name in ("g-disk", "g-vm"):
        group.append(resources.find(f"primitive[@id='{name}']"))
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--simulate", "--format", "text",
                   check=True).stdout
    assert planned(out)["desk"] == "n2"
    assert simulated(out) == {"g-disk": "n2", "g-vm": "n2"}
    xml = run_tool("place", "--cib", str(tmp_path / "cib.xml"), "--format", "xml", check=True).stdout
    assert [el.get("rsc") for el in etree.fromstring(xml)] == ["desk"]
    # A member's name stands for its group.
    assert run_tool("place", "g-vm", "--cib", str(tmp_path / "cib.xml"), check=True).stdout == "desk: n2\n"
    placed = tmp_path / "placed.xml"
    run_tool("place", "--cib", str(tmp_path / "cib.xml"), "--write-cib", str(placed), check=True)
    cleared = run_tool("clear", "g-disk", "--cib", str(placed), "--format", "pcs", check=True).stdout
    assert cleared == "pcs constraint delete ravada-place-desk\n"


def test_clone_utilization_is_reserved_on_its_nodes(tmp_path):
    cib = util_cib(cluster([Node("n1", 8, 8192), Node("n2", 8, 8192)], []))
    resources = cib.find("configuration/resources")
    clone = etree.SubElement(resources, "clone", id="storage-clone")
    primitive = etree.SubElement(clone, "primitive", id="storage", type="Dummy", provider="pacemaker",
                                 **{"class": "ocf"})
    util = etree.SubElement(primitive, "utilization", id="storage-util")
    etree.SubElement(util, "nvpair", id="storage-mem", name="hv_memory", value="4096")
    # Kept off n2: only n1 gives 4096 MiB to the clone.
    etree.SubElement(cib.find("configuration/constraints"), "rsc_location", id="clone-not-n2",
                     rsc="storage-clone", node="n2", score="-INFINITY")
    path = save(cib, tmp_path / "cib.xml")
    # Pacemaker starts the clone (the CIB gets its status), then the VM is defined.
    subprocess.run(["crm_simulate", "--xml-file", path, "--simulate", "--save-output", path],
                   check=True, capture_output=True)
    cib = etree.parse(path).getroot()
    vm = etree.SubElement(cib.find("configuration/resources"), "primitive", id="vm1", type="Dummy",
                          provider="pacemaker", **{"class": "ocf"})
    util = etree.SubElement(vm, "utilization", id="vm1-util")
    etree.SubElement(util, "nvpair", id="vm1-cpu", name="cpu", value="2")
    etree.SubElement(util, "nvpair", id="vm1-mem", name="hv_memory", value="6144")
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--explain", "--simulate", check=True).stdout
    assert "n1                   excluded: memory: needs 6144 MiB, 4096 free" in out
    assert planned(out)["vm1"] == "n2" and simulated(out)["vm1"] == "n2"


def test_colocation_together_and_apart(tmp_path):
    c = cluster([Node("n1", 8, 8192), Node("n2", 8, 8192), Node("n3", 8, 8192)],
                [VM("web", 1, 1024), VM("db", 1, 1024), VM("spare", 1, 1024)])
    cib = util_cib(c)
    constraints = cib.find("configuration/constraints")
    etree.SubElement(constraints, "rsc_colocation", id="web-with-db", rsc="web", **{"with-rsc": "db"},
                     score="INFINITY")
    etree.SubElement(constraints, "rsc_colocation", id="spare-not-db", rsc="spare", **{"with-rsc": "db"},
                     score="-INFINITY")
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--simulate", check=True).stdout
    plan = planned(out)
    assert set(plan) == {"web+db", "spare"} and plan["web+db"] != plan["spare"]
    where = simulated(out)
    assert where["web"] == where["db"] == plan["web+db"] and where["spare"] == plan["spare"]


def test_pattern_and_rule_locations_are_never_contradicted(tmp_path):
    nodes = [Node("n1", 8, 8192), Node("n2", 8, 8192), Node("n3", 16, 16384)]
    c = cluster(nodes, [VM("win-a", 1, 1024), VM("win-b", 1, 1024), VM("lin-a", 1, 1024)])
    cib = util_cib(c)
    constraints = cib.find("configuration/constraints")
    # Windows VMs only where the node has a licence attribute; nothing on n3 (a rule on #uname).
    loc = etree.SubElement(constraints, "rsc_location", id="win-licence", **{"rsc-pattern": "^win-"})
    rule = etree.SubElement(loc, "rule", id="win-licence-rule", score="-INFINITY")
    etree.SubElement(rule, "expression", id="win-licence-expr", attribute="licence", operation="not_defined")
    loc = etree.SubElement(constraints, "rsc_location", id="not-n3", rsc="lin-a")
    rule = etree.SubElement(loc, "rule", id="not-n3-rule", score="-INFINITY", **{"boolean-op": "or"})
    etree.SubElement(rule, "expression", id="not-n3-expr", attribute="#uname", operation="eq", value="n3")
    etree.SubElement(rule, "expression", id="not-n1-expr", attribute="#uname", operation="eq", value="n1")
    attrs = etree.SubElement(cib.find("configuration/nodes/node[@uname='n2']"), "instance_attributes",
                             id="n2-attrs")
    etree.SubElement(attrs, "nvpair", id="n2-licence", name="licence", value="yes")
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--simulate", "--explain",
                   check=True).stdout
    plan = planned(out)
    assert plan == {"win-a": "n2", "win-b": "n2", "lin-a": "n2"}
    assert "excluded: banned by an administrator's constraint (win-licence)" in out
    simulated(out)


def test_unreadable_mandatory_rule_is_refused(tmp_path):
    cib = util_cib(cluster([Node("n1", 8, 8192)], [VM("vm1", 1, 1024)]))
    loc = etree.SubElement(cib.find("configuration/constraints"), "rsc_location", id="weekdays", rsc="vm1")
    rule = etree.SubElement(loc, "rule", id="weekdays-rule", score="-INFINITY")
    etree.SubElement(rule, "date_expression", id="weekdays-date", operation="gt", start="2026-01-01")
    proc = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"))
    assert proc.returncode == 1 and "cannot evaluate the mandatory rule" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def _fail_count(cib: etree._Element, node: str, name: str, value: str) -> None:
    state = cib.find(f"status/node_state[@uname='{node}']")
    transient = state.find("transient_attributes")
    if transient is None:
        transient = etree.SubElement(state, "transient_attributes", id=state.get("id"))
        etree.SubElement(transient, "instance_attributes", id=f"status-{state.get('id')}")
    etree.SubElement(transient.find("instance_attributes"), "nvpair", id=f"status-{node}-{name}", name=name,
                     value=value)


def test_failure_map_keeps_a_vm_off_the_node_where_it_reached_migration_threshold(tmp_path):
    c = cluster([Node("big", 16, 16384), Node("small", 4, 4096)], [VM("flaky", 1, 1024), VM("other", 1, 1024)])
    cib = util_cib(c)
    meta = etree.SubElement(cib.find("configuration/resources/primitive[@id='flaky']"), "meta_attributes",
                            id="flaky-meta")
    etree.SubElement(meta, "nvpair", id="flaky-mt", name="migration-threshold", value="3")
    _fail_count(cib, "big", "fail-count-flaky#monitor_10000", "3")
    _fail_count(cib, "big", "fail-count-other#monitor_10000", "2")       # below the default INFINITY
    out = run_tool("place", "--cib", save(cib, tmp_path / "cib.xml"), "--explain", "--simulate",
                   check=True).stdout
    assert "big                  excluded: failed here 3 time(s), migration-threshold 3" in out
    assert planned(out)["flaky"] == "small" and simulated(out)["flaky"] == "small"


def test_rebalance_does_not_fight_stickiness(tmp_path):
    c = cluster([Node("n1", 16, 16384), Node("n2", 16, 16384)],
                [VM(f"vm{i}", 2, 2048, node="n1") for i in range(4)])
    cib = util_cib(c)
    defaults = etree.SubElement(cib.find("configuration"), "rsc_defaults")
    meta = etree.SubElement(defaults, "meta_attributes", id="rsc-options")
    etree.SubElement(meta, "nvpair", id="rsc-stick", name="resource-stickiness", value="5000")
    path = save(cib, tmp_path / "cib.xml")
    out = run_tool("rebalance", "--cib", path, check=True).stdout
    assert "not moved (resource-stickiness >= score 1000): vm0, vm1, vm2, vm3" in out and "with 0 move(s)" in out
    moved = run_tool("rebalance", "--cib", path, "--score", "INFINITY", "--simulate", check=True).stdout
    assert "n1 -> n2" in moved
    simulated(moved)


@pytest.mark.parametrize("policy", ["balanced", "pack", "ravada"])
def test_rebalance_works_for_every_policy(tmp_path, policy):
    c = cluster([Node("n1", 16, 16384), Node("n2", 16, 16384), Node("n3", 16, 16384)],
                [VM("a1", 2, 2048, node="n1"), VM("a2", 2, 2048, node="n1"), VM("a3", 2, 2048, node="n1"),
                 VM("b1", 2, 2048, node="n2"), VM("c1", 2, 2048, node="n3")])
    out = run_tool("rebalance", "--cib", save(util_cib(c), tmp_path / "cib.xml"), "--policy", policy,
                   "--simulate", check=True).stdout
    moves = [line for line in out.splitlines() if " -> " in line and ": " in line and not line.startswith(" ")]
    simulated(out)
    if policy == "pack":
        # Consolidates: the lone VMs join the busy node, so n2 and n3 can be shut down.
        assert sorted(line.split(":")[0] for line in moves) == ["b1", "c1"]
        assert all(line.split()[3] == "n1" for line in moves), out
        assert "no VM left on n2, n3 after these moves" in out
    else:
        assert moves and all(line.split()[1] == "n1" for line in moves), out


def test_running_colocated_vms_move_together_and_a_stopped_one_joins_them(tmp_path):
    c = cluster([Node("n1", 8, 8192), Node("n2", 8, 8192)],
                [VM("a", 1, 1024, node="n1"), VM("b", 1, 1024, node="n1"), VM("c", 1, 1024),
                 VM("d", 1, 1024, node="n1")])
    cib = util_cib(c)
    constraints = cib.find("configuration/constraints")
    etree.SubElement(constraints, "rsc_colocation", id="a-with-b", rsc="a", **{"with-rsc": "b"}, score="INFINITY")
    etree.SubElement(constraints, "rsc_colocation", id="c-with-b", rsc="c", **{"with-rsc": "b"}, score="INFINITY")
    path = save(cib, tmp_path / "cib.xml")
    out = run_tool("place", "--cib", path, "--explain", check=True).stdout
    assert "c: n1" in out.splitlines()
    drained = run_tool("drain", "n1", "--cib", path, "--simulate", check=True).stdout
    assert "a+b: n1 -> n2" in drained and "d: n1 -> n2" in drained
    assert simulated(drained) == {"a": "n2", "b": "n2", "c": "n2", "d": "n2"}


def test_a_pattern_matches_top_level_resources_only_as_in_pacemaker(tmp_path):
    cib = util_cib(cluster([Node("n1", 8, 8192), Node("n2", 8, 8192)], [VM("m1", 1, 1024), VM("m2", 1, 1024)]))
    resources = cib.find("configuration/resources")
    group = etree.SubElement(resources, "group", id="grp")
    for name in ("m1", "m2"):
        group.append(resources.find(f"primitive[@id='{name}']"))
    constraints = cib.find("configuration/constraints")
    etree.SubElement(constraints, "rsc_location", id="member", **{"rsc-pattern": "^m2$"}, node="n1",
                     score="-INFINITY")
    etree.SubElement(constraints, "rsc_location", id="whole", **{"rsc-pattern": "^gr"}, node="n2",
                     score="-INFINITY")
    path = save(cib, tmp_path / "cib.xml")
    scores = subprocess.run(["crm_simulate", "--xml-file", path, "--show-scores"], capture_output=True,
                            text=True, check=True).stdout
    assert "group_assign: grp allocation score on n1: 0" in scores
    assert "group_assign: grp allocation score on n2: -INFINITY" in scores
    out = run_tool("place", "--cib", path, "--explain", "--simulate", check=True).stdout
    assert "n2                   excluded: banned by an administrator's constraint (whole)" in out
    assert planned(out) == {"grp": "n1"} and simulated(out) == {"m1": "n1", "m2": "n1"}
