"""Location rules read as Pacemaker reads them: for generated rules (attribute expressions of
every operation and type, and/or, nested rules) on nodes with generated attributes, the nodes
ravada-place excludes are exactly those where Pacemaker's scheduler (`crm_simulate
--show-scores`) gives the VM -INFINITY."""
from __future__ import annotations

import random
import re
import subprocess

import pytest
from lxml import etree

from placement_helpers import require_pacemaker_tools
from ravada_placement import cibgen
from ravada_placement.cib import cluster_from_cib
from ravada_placement.model import VM, Cluster, InputError, Node

ATTRIBUTES = {"rack": ["a", "b", "B", "10", "9"], "mem": ["8", "16", "128", "016", "-3", "2.5", " 7x"],
              "ver": ["1.2.3", "1.10", "2", "1.2"]}
VALUES = ["a", "b", "9", "10", "16", "2.5", "1.9", "1.10", "n2", "N2", "-3", "016", "1.2", "1e1"]
VERSIONS = ["1.2.3", "1.10", "2", "1.9", "1.2", "1.2.0"]
NODES = [f"n{i}" for i in range(1, 7)]


def generated(seed: int, vms: int = 40) -> etree._Element:
    rng = random.Random(seed)
    cluster = Cluster({n: Node(n, 64, 65536) for n in NODES}, {f"v{i}": VM(f"v{i}", 1, 16) for i in range(vms)})
    cib = cibgen.cib_for(cluster, "default")
    cib.set("validate-with", "pacemaker-3.9")        # type="integer" needs it
    for node in cib.iterfind("configuration/nodes/node"):
        attrs = etree.SubElement(node, "instance_attributes", id=f"{node.get('uname')}-ia")
        for name, values in ATTRIBUTES.items():
            if rng.random() < 0.8:
                etree.SubElement(attrs, "nvpair", id=f"{node.get('uname')}-{name}", name=name,
                                 value=rng.choice(values))

    def expression(parent: etree._Element, eid: str) -> None:
        operation = rng.choice(["lt", "gt", "lte", "gte", "eq", "ne", "defined", "not_defined"])
        attrs = {"id": eid, "attribute": rng.choice([*ATTRIBUTES, "missing", "#uname"]), "operation": operation}
        if operation not in ("defined", "not_defined"):
            attrs["value"] = rng.choice(VALUES)
            kind = rng.choice([None, "string", "integer", "number", "version"])
            if kind:
                attrs["type"] = kind
            if kind == "version":
                # Pacemaker 2.1.5 loops forever comparing a non-numeric version.
                attrs["attribute"], attrs["value"] = "ver", rng.choice(VERSIONS)
        etree.SubElement(parent, "expression", **attrs)

    constraints = cib.find("configuration/constraints")
    for i in range(vms):
        location = etree.SubElement(constraints, "rsc_location", id=f"l{i}", rsc=f"v{i}")
        rule = etree.SubElement(location, "rule", id=f"r{i}", score="-INFINITY",
                                **{"boolean-op": rng.choice(["and", "or"])})
        for j in range(rng.randint(1, 3)):
            if rng.random() < 0.25:
                nested = etree.SubElement(rule, "rule", id=f"r{i}-{j}", **{"boolean-op": rng.choice(["and", "or"])})
                for k in range(2):
                    expression(nested, f"e{i}-{j}-{k}")
            else:
                expression(rule, f"e{i}-{j}")
    return cib


def pacemaker_bans(path: str) -> dict[str, set[str]]:
    argv = ["crm_simulate", "--xml-file", path, "--show-scores"]
    for node in NODES:
        argv += ["--node-up", node]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    bans: dict[str, set[str]] = {}
    for vm, node, score in re.findall(r"primitive_assign: (\S+) allocation score on (\S+): (\S+)", out):
        if score == "-INFINITY":
            bans.setdefault(vm, set()).add(node)
    return bans


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_rule_bans_match_pacemakers(tmp_path, seed):
    require_pacemaker_tools()
    cib = generated(seed)
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(cib))
    theirs = pacemaker_bans(str(path))
    ours = {vm.name: set(vm.banned) for vm in cluster_from_cib(cib, None).vms.values()}
    assert sum(len(nodes) for nodes in theirs.values()) > 20          # the rules do ban
    assert {vm: nodes for vm, nodes in ours.items() if nodes} == theirs


def test_a_mandatory_rule_comparing_a_non_numeric_version_is_refused():
    cib = generated(1, vms=1)
    expression = cib.find(".//expression")
    expression.attrib.update({"attribute": "rack", "operation": "gt", "type": "version", "value": "1.2"})
    with pytest.raises(InputError, match="cannot evaluate the mandatory rule"):
        cluster_from_cib(cib, None)
