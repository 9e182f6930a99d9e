"""A Pacemaker CIB for a Cluster: for tests, benchmarks and planning from JSON.

VMs become `ocf:pacemaker:Dummy` primitives carrying the same utilization and meta attributes
as real VM resources, so Pacemaker's scheduler (crm_simulate) treats them exactly alike.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from lxml import etree

from .cib import BASE_ATTRIBUTE_PREFIX, BASE_META, USER_META
from .model import Cluster, InputError
from .pacemaker import run, tool_xml

VALIDATE_WITH = "pacemaker-3.0"
# Resource ids are XML IDs (NCName), close enough.
XML_ID = re.compile(r"[^\W\d][\w.-]*")


def _nvset(parent: etree._Element, tag: str, owner: str, values: dict[str, str | int]) -> None:
    block = etree.SubElement(parent, tag, id=f"{owner}-{tag}")
    for name, value in values.items():
        etree.SubElement(block, "nvpair", id=f"{owner}-{tag}-{name}", name=name, value=str(value))


def cib_for(cluster: Cluster, placement_strategy: str = "default") -> etree._Element:
    """Configuration only (no status): nodes, utilization, base attributes, VM primitives."""
    cib = etree.Element("cib", {"validate-with": VALIDATE_WITH, "epoch": "1", "num_updates": "0",
                                "admin_epoch": "0", "have-quorum": "1"})
    configuration = etree.SubElement(cib, "configuration")
    crm_config = etree.SubElement(configuration, "crm_config")
    _nvset(crm_config, "cluster_property_set", "cib-bootstrap",
           {"stonith-enabled": "false", "placement-strategy": placement_strategy})
    nodes = etree.SubElement(configuration, "nodes")
    for i, node in enumerate(cluster.nodes.values(), start=1):
        node_el = etree.SubElement(nodes, "node", id=str(i), uname=node.name)
        if node.bases:
            _nvset(node_el, "instance_attributes", f"node{i}",
                   {f"{BASE_ATTRIBUTE_PREFIX}{base}": 1 for base in sorted(node.bases)})
        if node.cpu is not None and node.memory is not None:
            _nvset(node_el, "utilization", f"node{i}", {"cpu": node.cpu, "hv_memory": node.memory})
    resources = etree.SubElement(configuration, "resources")
    for vm in cluster.vms.values():
        if not XML_ID.fullmatch(vm.name):
            raise InputError(f"VM name {vm.name!r} cannot be a Pacemaker resource id (an XML NCName: "
                             "a letter or '_', then letters, digits, '_', '.', '-')")
        primitive = etree.SubElement(resources, "primitive", id=vm.name, type="Dummy",
                                     provider="pacemaker", **{"class": "ocf"})
        meta = {key: value for key, value in ((USER_META, vm.user), (BASE_META, vm.base)) if value}
        if meta:
            _nvset(primitive, "meta_attributes", vm.name, meta)
        _nvset(primitive, "utilization", vm.name, {"cpu": vm.cpu, "hv_memory": vm.memory})
    constraints = etree.SubElement(configuration, "constraints")
    for vm in cluster.vms.values():
        for node in sorted(vm.banned):
            etree.SubElement(constraints, "rsc_location", id=f"ban-{vm.name}-{node}", rsc=vm.name,
                             node=node, score="-INFINITY")
    etree.SubElement(cib, "status")
    return cib


def live_like_cib(cluster: Cluster, placement_strategy: str = "default") -> etree._Element:
    """The CIB plus a status section in which every available node is online and every VM
    with a node runs there (crm_simulate injects the node joins and start results)."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        source, result = Path(tmp) / "in.xml", Path(tmp) / "out.xml"
        source.write_bytes(etree.tostring(cib_for(cluster, placement_strategy)))
        argv = ["crm_simulate", "--xml-file", str(source), "--save-output", str(result)]
        for node in cluster.nodes.values():
            if not node.unavailable:
                argv += ["--node-up", node.name]
        for vm in cluster.vms.values():
            if vm.node:
                argv += ["--op-inject", f"{vm.name}_start_0@{vm.node}=0",
                         "--op-inject", f"{vm.name}_monitor_0@{vm.node}=0"]
        run(argv)
        return tool_xml(result.read_bytes(), "crm_simulate's output")
