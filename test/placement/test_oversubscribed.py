"""A burst larger than the cluster: the most VMs placed, priority first, nothing overcommitted,
and the text says how many were left out and what would fit them."""
from __future__ import annotations

import random
import subprocess

import pytest
from lxml import etree

from placement_helpers import require_pacemaker_tools, run_tool, write_json
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node
from ravada_placement.pacemaker import placements_after
from ravada_placement.plan import plan_place
from ravada_placement.policies import make_policy
from ravada_placement.state import Limits

SHAPES = [(1, 1024), (2, 2048), (2, 4096), (4, 8192), (8, 16384), (6, 3072)]


def burst(seed: int, nodes: int = 8, load: float = 2.0) -> Cluster:
    rng = random.Random(seed)
    c = Cluster()
    for i in range(nodes):
        cpu, memory = rng.choice([(16, 32768), (32, 65536), (64, 65536), (24, 98304)])
        c.nodes[f"n{i}"] = Node(f"n{i}", cpu, memory, frozenset({"b0"} if i % 3 else {"b0", "b1"}))
    capacity = sum(n.memory for n in c.nodes.values())
    demand = 0
    while demand < load * capacity:
        cpu, memory = rng.choice(SHAPES)
        name = f"vm{len(c.vms):04}"
        c.vms[name] = VM(name, cpu, memory, base=rng.choice(["b0", "b0", "b1"]))
        demand += memory
    return c


def smallest_first_fit(c: Cluster) -> int:
    free = {n.name: [n.cpu, n.memory] for n in c.nodes.values()}
    placed = 0
    for vm in sorted(c.vms.values(), key=lambda v: (v.memory, v.cpu, v.name)):
        for name, room in free.items():
            if vm.base in c.nodes[name].bases and room[0] >= vm.cpu and room[1] >= vm.memory:
                room[0] -= vm.cpu
                room[1] -= vm.memory
                placed += 1
                break
    return placed


def loads(c: Cluster, plan) -> dict[str, list[int]]:
    used = {name: [0, 0] for name in c.nodes}
    for move in plan.moves:
        used[move.target][0] += c.vms[move.vm].cpu
        used[move.target][1] += c.vms[move.vm].memory
    return used


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy", ["balanced", "pack"])
def test_most_vms_placed_without_overcommit(seed, policy):
    c = burst(seed)
    plan = plan_place(c, make_policy(policy), Limits())
    assert len(plan.moves) >= smallest_first_fit(c)
    assert len(plan.moves) >= 0.9 * plan.bound and len(plan.moves) <= plan.bound < len(c.vms)
    for name, (cpu, memory) in loads(c, plan).items():
        assert cpu <= c.nodes[name].cpu and memory <= c.nodes[name].memory
    assert all(c.vms[m.vm].base in c.nodes[m.target].bases for m in plan.moves)
    again = plan_place(c, make_policy(policy), Limits())
    assert again.moves == plan.moves and again.failures == plan.failures


def test_a_higher_priority_vm_is_never_left_out_for_a_lower_one():
    nodes = [Node("n1", 8, 8192), Node("n2", 8, 8192)]
    small = [VM(f"s{i}", 1, 1024) for i in range(12)]
    big = [VM("big1", 4, 6144, priority=10), VM("big2", 4, 6144, priority=10)]
    c = Cluster({n.name: n for n in nodes}, {v.name: v for v in small + big})
    plan = plan_place(c, make_policy("balanced"), Limits())
    placed = {m.vm for m in plan.moves}
    assert {"big1", "big2"} <= placed
    assert len(placed) == 6           # the two big ones and four small ones fill both nodes
    # Without priority the small ones win: more VMs.
    plain = Cluster(c.nodes, {v.name: VM(v.name, v.cpu, v.memory) for v in small + big})
    assert len(plan_place(plain, make_policy("balanced"), Limits()).moves) == 12


def test_text_says_how_many_were_left_out_and_what_would_fit_them(tmp_path):
    nodes = [{"name": "n1", "cpu": 8, "hv_memory": 16384}, {"name": "n2", "cpu": 8, "hv_memory": 16384}]
    vms = [{"name": f"v{i}", "cpu": 4, "hv_memory": 2048} for i in range(10)]
    path = write_json(tmp_path, nodes, vms)
    proc = run_tool("place", "--json", path, "--explain")
    assert proc.returncode == 3
    assert "bound: at most 4 of 10 VM(s) can be placed" in proc.stdout
    assert "left out: 6 of 10 VM(s); to fit them the cluster needs 24 more vCPUs" in proc.stdout
    assert "nothing applied" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_more_placed_than_pacemaker_balanced(tmp_path):
    require_pacemaker_tools()
    c = burst(7, nodes=6)
    cib = cibgen.live_like_cib(Cluster(c.nodes, {}), "balanced")
    full = cibgen.cib_for(c, "balanced")
    cib.replace(cib.find("configuration"), full.find("configuration"))
    constraints = cib.find("configuration/constraints")
    for base in ("b0", "b1"):
        for vm in c.vms.values():
            if vm.base == base:
                loc = etree.SubElement(constraints, "rsc_location", id=f"need-{vm.name}", rsc=vm.name)
                rule = etree.SubElement(loc, "rule", id=f"need-{vm.name}-r", score="-INFINITY")
                etree.SubElement(rule, "expression", id=f"need-{vm.name}-e", attribute=f"ravada-base-{base}",
                                 operation="not_defined")
    source, graph = tmp_path / "in.xml", tmp_path / "graph.xml"
    source.write_bytes(etree.tostring(cib))
    subprocess.run(["crm_simulate", "--xml-file", str(source), "--run", "--save-graph", str(graph)],
                   check=True, capture_output=True, timeout=120)
    theirs = sum(1 for node in placements_after(etree.parse(str(graph)).getroot(), {}).values() if node)
    ours = plan_place(c, make_policy("balanced"), Limits())
    assert len(ours.moves) > theirs
