"""Read a Cluster from a Pacemaker CIB (live or saved) and crm_mon's status of it.

Conventions (documented in doc/placement.md):
  node utilization  cpu, hv_memory (MiB)     capacity offered to VMs (ocf:ravada:nodeinfo)
  node attribute    ravada-base-<base>=<v>   base <base> is present and verified on the node
                                             (ocf:ravada:basesync); "", 0, false, no = absent
  VM utilization    cpu, hv_memory (MiB)     as ocf:ravada:VirtualDomain sets them
  VM meta           ravada-user, ravada-base owner, required base
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lxml import etree

from . import pacemaker
from .model import VM, Cluster, InputError, Node, require_int

BASE_ATTRIBUTE_PREFIX = "ravada-base-"
USER_META = "ravada-user"
BASE_META = "ravada-base"
CONSTRAINT_PREFIX = "ravada-place-"
ABSENT_VALUES = {"", "0", "false", "no", "off"}
BASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VM_AGENT_TYPES = {"VirtualDomain"}

MEMORY_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "kb": 1000 / 1024, "k": 1, "kib": 1,
                    "mb": 1000 ** 2 / 1024, "m": 1024, "mib": 1024, "gb": 1000 ** 3 / 1024,
                    "g": 1024 ** 2, "gib": 1024 ** 2, "tb": 1000 ** 4 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}


def parse_cib(data: bytes, origin: str) -> etree._Element:
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as err:
        raise InputError(f"{origin}: not well-formed XML: {err}") from None
    if root.tag != "cib" or root.find("configuration") is None:
        raise InputError(f"{origin}: not a Pacemaker CIB (expected <cib><configuration>)")
    return root


def load_cib(path: str | None) -> etree._Element:
    """The CIB from a file, or the live one (`cibadmin --query`) when path is None."""
    if path is None:
        return parse_cib(pacemaker.query_live_cib(), "live CIB")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    return parse_cib(data, path)


def has_node_status(cib: etree._Element) -> bool:
    return cib.find("status/node_state") is not None


def _nvpairs(parent: etree._Element | None, block: str) -> dict[str, str]:
    if parent is None:
        return {}
    return {nv.get("name"): nv.get("value", "") for nv in parent.iterfind(f"{block}/nvpair")}


def cluster_from_cib(cib: etree._Element, status: etree._Element | None) -> Cluster:
    """`status` is crm_mon's XML for the same snapshot; None means "plan as if every node
    were online" (a saved configuration without status section)."""
    node_status = {n.get("name"): n for n in status.iterfind("nodes/node")} if status is not None else {}
    running = pacemaker.resource_locations(status) if status is not None else {}
    states = {state.get("uname"): state for state in cib.iterfind("status/node_state")}
    drained = _drained_nodes(cib)
    cluster = Cluster()
    for node_el in cib.iterfind("configuration/nodes/node"):
        name = node_el.get("uname") or node_el.get("id")
        state = states.get(name)
        utilization = _nvpairs(node_el, "utilization") | _nvpairs(
            state.find("transient_attributes") if state is not None else None, "utilization")
        attributes = _nvpairs(node_el, "instance_attributes") | _nvpairs(
            state.find("transient_attributes") if state is not None else None, "instance_attributes")
        bases = frozenset(key[len(BASE_ATTRIBUTE_PREFIX):] for key, value in attributes.items()
                          if key.startswith(BASE_ATTRIBUTE_PREFIX) and value.strip().lower() not in ABSENT_VALUES)
        cluster.nodes[name] = Node(
            name=name,
            cpu=require_int(utilization["cpu"], f"node {name} utilization cpu") if "cpu" in utilization else None,
            memory=(require_int(utilization["hv_memory"], f"node {name} utilization hv_memory")
                    if "hv_memory" in utilization else None),
            bases=bases,
            unavailable=(_unavailable(node_status.get(name)) if status is not None else None)
            or ("drained by ravada-place (run 'ravada-place clear' when it may take VMs again)"
                if name in drained else None))
    bans = _bans(cib)
    for primitive in cib.iterfind("configuration/resources/primitive"):
        vm = _vm_from_primitive(primitive, running, bans)
        if vm is not None:
            cluster.vms[vm.name] = vm
    cluster.validate()
    return cluster


def _unavailable(node: etree._Element | None) -> str | None:
    if node is None:
        return "unknown to crm_mon"
    for flag, reason in (("unclean", "unclean (needs fencing)"), ("shutdown", "shutting down"),
                         ("standby", "in standby"), ("maintenance", "in maintenance")):
        if node.get(flag) == "true":
            return reason
    if node.get("online") != "true":
        return "offline"
    return None


def _drained_nodes(cib: etree._Element) -> set[str]:
    """Nodes a `ravada-place drain` emptied: its bans are named ravada-place-<vm>-avoid-<node>."""
    return {loc.get("node") for loc in cib.iterfind("configuration/constraints/rsc_location")
            if loc.get("id", "").startswith(CONSTRAINT_PREFIX) and "-avoid-" in loc.get("id", "")
            and loc.get("score", "").strip().lower() in ("-infinity", "-inf") and loc.get("node")}


def _bans(cib: etree._Element) -> dict[str, set[str]]:
    """-INFINITY node locations (an admin's, crm_resource --ban's, or our drain's): the
    planner never puts the VM there."""
    bans: dict[str, set[str]] = {}
    for loc in cib.iterfind("configuration/constraints/rsc_location"):
        if not loc.get("rsc") or not loc.get("node"):
            continue
        if loc.get("score", "").strip().lower() in ("-infinity", "-inf"):
            bans.setdefault(loc.get("rsc"), set()).add(loc.get("node"))
    return bans


def _vm_from_primitive(primitive: etree._Element, running: dict[str, str | None],
                       bans: dict[str, set[str]]) -> VM | None:
    name = primitive.get("id")
    utilization = _nvpairs(primitive, "utilization")
    is_vm = "hv_memory" in utilization or primitive.get("type") in VM_AGENT_TYPES
    if not is_vm:
        return None
    if "cpu" not in utilization or "hv_memory" not in utilization:
        vcpus, memory = _domain_size(primitive)
        utilization = {"cpu": str(vcpus), "hv_memory": str(memory)} | utilization
    meta = _nvpairs(primitive, "meta_attributes")
    base = meta.get(BASE_META) or None
    if base is not None and not BASE_NAME.match(base):
        raise InputError(f"VM {name}: meta {BASE_META}={base!r} is not a valid base name "
                         "(letters, digits, '_', '.', '-')")
    return VM(name=name,
              cpu=require_int(utilization["cpu"], f"VM {name} utilization cpu"),
              memory=require_int(utilization["hv_memory"], f"VM {name} utilization hv_memory"),
              user=meta.get(USER_META) or None,
              base=base,
              node=running.get(name),
              banned=frozenset(bans.get(name, ())))


def _domain_size(primitive: etree._Element) -> tuple[int, int]:
    """(vCPUs, MiB) from the libvirt domain XML named by the agent's `config` parameter."""
    name = primitive.get("id")
    config = _nvpairs(primitive, "instance_attributes").get("config")
    if not config:
        raise InputError(f"VM {name}: no utilization cpu/hv_memory and no config parameter to read them from")
    try:
        domain = etree.parse(config, etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except (OSError, etree.XMLSyntaxError) as err:
        raise InputError(f"VM {name}: cannot read domain XML {config}: {err}") from None
    vcpu_el, memory_el = domain.find("vcpu"), domain.find("memory")
    if vcpu_el is None or memory_el is None:
        raise InputError(f"VM {name}: domain XML {config} lacks <vcpu> or <memory>")
    vcpus = require_int((vcpu_el.text or "").strip(), f"VM {name} domain vcpu")
    unit = memory_el.get("unit", "KiB").lower()
    if unit not in MEMORY_UNITS_KIB:
        raise InputError(f"VM {name}: unknown memory unit {unit!r} in {config}")
    amount = require_int((memory_el.text or "").strip(), f"VM {name} domain memory")
    return vcpus, math.ceil(amount * MEMORY_UNITS_KIB[unit] / 1024)


def read_cluster(path: str | None) -> tuple[etree._Element, Cluster, bool]:
    """(CIB, cluster, has_status) from a CIB file or the live cluster."""
    cib = load_cib(path)
    with_status = has_node_status(cib)
    status = pacemaker.status_of(cib) if with_status else None
    return cib, cluster_from_cib(cib, status), with_status
