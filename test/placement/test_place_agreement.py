"""Generated clusters with everything at once (bans by node and by pattern rule, colocations
together and apart, a group, a clone with utilization, running VMs): whenever ravada-place
finds a complete plan, Pacemaker's scheduler (crm_simulate, placement-strategy=utilization)
puts every VM exactly where the plan says, so the plan contradicts no mandatory constraint.
The clone is left stopped: Pacemaker starts its instances in the same transition, and the
plan must leave room for them."""
from __future__ import annotations

import random
import subprocess

import pytest
from lxml import etree

from placement_helpers import require_pacemaker_tools, run_tool
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node


def scenario(seed: int) -> etree._Element:
    rng = random.Random(seed)
    nodes = [Node(f"n{i}", rng.choice([8, 16, 32]), rng.choice([16384, 32768, 65536]),
                  frozenset(b for b in ("w10", "deb") if rng.random() < 0.7)) for i in range(5)]
    vms = []
    free = {n.name: [n.cpu, n.memory - 1024] for n in nodes}       # the clone takes 1024 MiB
    for i in range(16):
        cpu, memory = rng.choice([1, 2, 4]), rng.choice([1024, 2048, 4096])
        host = rng.choice([None, None, None, rng.choice(nodes)])
        if host is not None and (free[host.name][0] < cpu or free[host.name][1] < memory):
            host = None             # what runs fits (Pacemaker would move it otherwise)
        if host is not None:
            free[host.name][0] -= cpu
            free[host.name][1] -= memory
        base = rng.choice([None, "w10", "deb"])
        if host is not None and base is not None and base not in host.bases:
            base = None
        vms.append(VM(f"vm{i:02}", cpu, memory, base=base, node=host.name if host else None))
    cib = cibgen.live_like_cib(Cluster({n.name: n for n in nodes}, {v.name: v for v in vms}), "utilization")
    constraints = cib.find("configuration/constraints")
    stopped = [vm.name for vm in vms if vm.node is None]
    for base in ("w10", "deb"):
        for vm in vms:
            if vm.base == base:
                location = etree.SubElement(constraints, "rsc_location", id=f"base-{vm.name}", rsc=vm.name)
                rule = etree.SubElement(location, "rule", id=f"base-{vm.name}-r", score="-INFINITY")
                etree.SubElement(rule, "expression", id=f"base-{vm.name}-e", attribute=f"ravada-base-{base}",
                                 operation="not_defined")
    for i in range(3):
        etree.SubElement(constraints, "rsc_location", id=f"ban{i}", rsc=rng.choice(stopped),
                         node=rng.choice(nodes).name, score="-INFINITY")
    pattern = etree.SubElement(constraints, "rsc_location", id="odd-not-n0", **{"rsc-pattern": "[13579]$"})
    rule = etree.SubElement(pattern, "rule", id="odd-not-n0-r", score="-INFINITY")
    etree.SubElement(rule, "expression", id="odd-not-n0-e", attribute="#uname", operation="eq", value="n0")
    a, b, c, d = rng.sample(stopped, 4)
    etree.SubElement(constraints, "rsc_colocation", id="together", rsc=a, **{"with-rsc": b}, score="INFINITY")
    etree.SubElement(constraints, "rsc_colocation", id="apart", rsc=c, **{"with-rsc": d}, score="-INFINITY")
    resources = cib.find("configuration/resources")
    e, f = [name for name in stopped if name not in (a, b, c, d)][:2]
    group = etree.SubElement(resources, "group", id="desk")
    for name in (e, f):
        group.append(resources.find(f"primitive[@id='{name}']"))
    # Running VMs stay put (as in any real cluster); our score 1000 beats it.
    defaults = etree.SubElement(cib.find("configuration"), "rsc_defaults")
    meta = etree.SubElement(defaults, "meta_attributes", id="defaults")
    etree.SubElement(meta, "nvpair", id="defaults-stickiness", name="resource-stickiness", value="100")
    clone = etree.SubElement(resources, "clone", id="agent-clone")
    primitive = etree.SubElement(clone, "primitive", id="agent", type="Dummy", provider="pacemaker",
                                 **{"class": "ocf"})
    util = etree.SubElement(primitive, "utilization", id="agent-util")
    etree.SubElement(util, "nvpair", id="agent-mem", name="hv_memory", value="1024")
    return cib


# Seeds whose scenario has a complete plan (the others leave some VM without a node).
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
def test_pacemaker_follows_every_complete_plan(tmp_path, seed):
    require_pacemaker_tools()
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(scenario(seed)))
    explain = run_tool("place", "--cib", str(path), "--explain").stdout
    assert "agent" not in explain
    proc = run_tool("place", "--cib", str(path), "--simulate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split("simulation (crm_simulate):")[1].splitlines()[1:]
    planned = [line for line in lines if "planned" in line]
    assert len(planned) >= 8 and all(line.endswith("as planned") for line in planned), proc.stdout
