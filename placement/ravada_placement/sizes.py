"""The VM sizes a plan was made with, written into the CIB where the VM agent has not yet.

ocf:ravada:VirtualDomain writes a VM's utilization at its first start.  Until then Pacemaker
counts the VM as taking nothing (its own capacity check lets a burst of new VMs crowd one
node), and each VM's first write makes the DC abort its transition, so the starts of a
burst run one after the other.  `--apply` therefore adds, in the same CIB patch as the
constraints, what the agent would write: only attributes the VM lacks and the agent would
set (autoset_utilization_<attr> not false), counted as the agent counts them.
"""
from __future__ import annotations

from lxml import etree
from ocf_ravada.params import FALSE_WORDS
from ocf_ravada.vdomain.utilization import ATTRIBUTES

from .cib import nvpairs
from .domain import domain_size
from .model import InputError

AGENT = ("ocf", "ravada", "VirtualDomain")


def missing_sizes(cib: etree._Element, resources: set[str]) -> dict[str, dict[str, str]]:
    """Primitive id -> utilization attributes to add, for the VM agent's primitives among
    `resources`.  A VM whose domain XML cannot be read is left to the agent."""
    result: dict[str, dict[str, str]] = {}
    for primitive in cib.iter("primitive"):
        name = primitive.get("id")
        if name not in resources or (primitive.get("class"), primitive.get("provider"), primitive.get("type")) != AGENT:
            continue
        params = nvpairs(primitive, "instance_attributes")
        wanted = [attr for attr in ATTRIBUTES if attr not in nvpairs(primitive, "utilization")
                  and params.get(f"autoset_utilization_{attr}", "true").strip().lower() not in FALSE_WORDS]
        if not wanted:
            continue
        try:
            vcpus, memory = domain_size(name, params.get("config"))
        except InputError:
            continue
        values = {"cpu": str(vcpus), "hv_memory": str(memory), "host_memory": str(memory)}
        result[name] = {attr: values[attr] for attr in wanted}
    return result
