"""Read a Cluster from a Pacemaker CIB (live or saved) and crm_mon's status of it.

Conventions (documented in doc/placement.md):
  node utilization  cpu, hv_memory (MiB)     capacity offered to VMs (ocf:ravada:nodeinfo)
  node attribute    ravada-base-<base>=<v>   base <base> is present and verified on the node
                                             (ocf:ravada:basesync); "", 0, false, no = absent
  VM utilization    cpu, hv_memory (MiB)     as ocf:ravada:VirtualDomain sets them
  VM meta           ravada-user, ravada-base owner, required base

What Pacemaker's scheduler respects is read too: groups (one unit), clones and bundles
(their utilization reserved where they run), mandatory colocations, -INFINITY locations by
node, pattern or rule, priority, resource-stickiness and the failure map (fail counts that
reached migration-threshold).
"""
from __future__ import annotations

import re
from dataclasses import replace

from lxml import etree
from ocf_ravada.pacemaker import node_kinds

from . import pacemaker, rules
from .domain import domain_size
from .inputs import CIB_LIMIT, parse_xml, read_regular_file
from .model import SCORE_INFINITY, VM, Cluster, InputError, Node, parse_score, require_int
from .units import merge_colocated

BASE_ATTRIBUTE_PREFIX = "ravada-base-"
USER_META = "ravada-user"
BASE_META = "ravada-base"
CONSTRAINT_PREFIX = "ravada-place-"
ABSENT_VALUES = {"", "0", "false", "no", "off"}
BASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VM_AGENT_TYPES = {"VirtualDomain"}
COLLECTIONS = ("clone", "master", "bundle")
FAIL_COUNT = re.compile(r"^fail-count-(.+?)(?::[0-9]+)?(?:#.*)?$")

def parse_cib(data: bytes, origin: str) -> etree._Element:
    root = parse_xml(data, origin)
    if root.tag != "cib" or root.find("configuration") is None:
        raise InputError(f"{origin}: not a Pacemaker CIB (expected <cib><configuration>)")
    return root


def load_cib(path: str | None) -> etree._Element:
    """The CIB from a file, or the live one (`cibadmin --query`) when path is None."""
    if path is None:
        return parse_cib(pacemaker.query_live_cib(), "live CIB")
    return parse_cib(read_regular_file(path, CIB_LIMIT), path)


def version(cib: etree._Element) -> tuple[str, str]:
    """(admin_epoch, epoch): they change with every configuration change, not with status."""
    return cib.get("admin_epoch", "0"), cib.get("epoch", "0")


def has_node_status(cib: etree._Element) -> bool:
    return cib.find("status/node_state") is not None


def nvpairs(parent: etree._Element | None, block: str) -> dict[str, str]:
    """The nvpairs of the blocks `block` that apply unconditionally (blocks with a rule are
    for rsc_defaults-style conditions this tool does not evaluate)."""
    if parent is None:
        return {}
    values = {}
    for nvset in parent.iterfind(block):
        if nvset.find("rule") is not None:
            continue
        for nv in nvset.iterfind("nvpair"):
            if nv.get("name") is not None:
                values[nv.get("name")] = nv.get("value", "")
    return values


def _require_id(element: etree._Element) -> str:
    rid = element.get("id")
    if not rid or not rid.strip():
        raise InputError(f"a <{element.tag}> in the CIB has no id")
    return rid


class _Reader:
    """One pass over a CIB snapshot; `cluster()` builds the planner's view."""

    def __init__(self, cib: etree._Element, status: etree._Element | None) -> None:
        self.cib = cib
        self.status = status
        self.config = cib.find("configuration")
        self.active = pacemaker.active_nodes(status) if status is not None else {}
        self.defaults = nvpairs(self.config.find("rsc_defaults"), "meta_attributes")
        properties = nvpairs(self.config.find("crm_config"), "cluster_property_set")
        self.symmetric = properties.get("symmetric-cluster", "true").strip().lower() not in ("false", "no", "0", "off")
        self.nodes: dict[str, Node] = {}
        self.node_attributes: dict[str, dict[str, str]] = {}

    # -- nodes ---------------------------------------------------------------------------

    def read_nodes(self) -> None:
        node_status = ({n.get("name"): n for n in self.status.iterfind("nodes/node")}
                       if self.status is not None else {})
        states = {state.get("uname"): state for state in self.cib.iterfind("status/node_state")}
        drained = _drained_nodes(self.cib)
        elements = {}
        for node_el in self.config.iterfind("nodes/node"):
            elements[node_el.get("uname") or _require_id(node_el)] = node_el
        # Remote and guest nodes have no <node> until a permanent attribute is set on them.
        for name, kind in node_kinds(self.cib).items():
            node_el = elements.get(name)
            state = states.get(name)
            transient = state.find("transient_attributes") if state is not None else None
            utilization = nvpairs(node_el, "utilization") | nvpairs(transient, "utilization")
            # Pacemaker's precedence: a transient attribute wins over the permanent one.
            attributes = nvpairs(node_el, "instance_attributes") | nvpairs(transient, "instance_attributes")
            node_id = node_el.get("id", name) if node_el is not None else name
            self.node_attributes[name] = attributes | {"#uname": name, "#id": node_id, "#kind": kind}
            bases = frozenset(key[len(BASE_ATTRIBUTE_PREFIX):] for key, value in attributes.items()
                              if key.startswith(BASE_ATTRIBUTE_PREFIX)
                              and value.strip().lower() not in ABSENT_VALUES)
            unavailable = _unavailable(node_status.get(name)) if self.status is not None else None
            if not unavailable and name in drained:
                unavailable = "drained by ravada-place (run 'ravada-place clear' when it may take VMs again)"
            self.nodes[name] = Node(
                name=name,
                cpu=require_int(utilization["cpu"], f"node {name} utilization cpu") if "cpu" in utilization else None,
                memory=(require_int(utilization["hv_memory"], f"node {name} utilization hv_memory")
                        if "hv_memory" in utilization else None),
                bases=bases, unavailable=unavailable)

    # -- resources -----------------------------------------------------------------------

    def meta(self, element: etree._Element, parent: etree._Element | None = None) -> dict[str, str]:
        inherited = nvpairs(parent, "meta_attributes") if parent is not None else {}
        return self.defaults | inherited | nvpairs(element, "meta_attributes")

    def size(self, primitive: etree._Element, as_vm: bool) -> tuple[int, int]:
        name = _require_id(primitive)
        utilization = nvpairs(primitive, "utilization")
        if as_vm and ("cpu" not in utilization or "hv_memory" not in utilization):
            config = nvpairs(primitive, "instance_attributes").get("config")
            vcpus, memory = domain_size(name, config)
            utilization = {"cpu": str(vcpus), "hv_memory": str(memory)} | utilization
        return (require_int(utilization.get("cpu", "0"), f"resource {name} utilization cpu"),
                require_int(utilization.get("hv_memory", "0"), f"resource {name} utilization hv_memory"))

    def reserve(self, primitive: etree._Element, nodes: set[str]) -> None:
        """Take a non-VM primitive's utilization on `nodes`."""
        cpu, memory = self.size(primitive, False)
        for node in nodes & self.reserved.keys():
            self.reserved[node][0] += cpu
            self.reserved[node][1] += memory

    def read_resources(self) -> tuple[list[VM], dict[str, str]]:
        """(VM units in CIB order, resource id -> the unit it belongs to); reserves the
        utilization of other primitives on the nodes where they run (collections: later,
        see reserve_collections)."""
        units, owner = [], {}
        self.reserved = {name: [0, 0] for name in self.nodes}
        self.collections: list[etree._Element] = []
        # rsc-pattern matches top-level resources only (a group member never, as in Pacemaker).
        self.top_ids: list[str] = []
        for element in self.config.find("resources") if self.config.find("resources") is not None else ():
            if not isinstance(element.tag, str):
                continue
            rid = _require_id(element)
            self.top_ids.append(rid)
            if element.tag == "primitive":
                if _is_vm(element):
                    units.append(self.vm_unit(element, [element]))
                    owner[rid] = rid
                else:
                    self.reserve(element, self.active.get(rid, set()))
            elif element.tag == "group":
                members = [m for m in element if isinstance(m.tag, str) and m.tag == "primitive"]
                for member in members:
                    _require_id(member)
                if any(_is_vm(m) for m in members):
                    units.append(self.vm_unit(element, members))
                    owner.update({rid: rid} | {m.get("id"): rid for m in members})
                else:
                    for member in members:
                        self.reserve(member, self.active.get(member.get("id"), set()))
            elif element.tag in COLLECTIONS:
                self.collections.append(element)
        return units, owner

    def reserve_collections(self, bans: dict[str, dict[str, str]]) -> None:
        """Clones and bundles are not VMs: every instance takes its utilization where it
        runs, and where Pacemaker may start one (every available node the clone is not
        banned from), unless the clone is stopped on purpose."""
        for element in self.collections:
            rid = element.get("id")
            primitives = list(element.iter("primitive"))
            where = set(self.active.get(rid, set()))
            if self.meta(element).get("target-role", "Started").strip().lower() != "stopped":
                banned = set(bans.get(rid, {})).union(*(bans.get(p.get("id"), {}) for p in primitives))
                where |= {name for name, node in self.nodes.items() if not node.unavailable and name not in banned}
            for primitive in primitives:
                _require_id(primitive)
                self.reserve(primitive, where)
        for name, (cpu, memory) in self.reserved.items():
            if cpu or memory:
                self.nodes[name] = replace(self.nodes[name], reserved=(cpu, memory))

    def vm_unit(self, element: etree._Element, primitives: list[etree._Element]) -> VM:
        rid = element.get("id")
        group = element if element.tag == "group" else None
        cpu = memory = stickiness = 0
        bases, users = [], []
        for primitive in primitives:
            p_cpu, p_memory = self.size(primitive, _is_vm(primitive))
            cpu, memory = cpu + p_cpu, memory + p_memory
            meta = self.meta(primitive, group)
            stickiness += _saturated(meta.get("resource-stickiness", "0"), f"{primitive.get('id')} resource-stickiness")
            if meta.get(BASE_META):
                bases.append(meta[BASE_META])
            if meta.get(USER_META):
                users.append(meta[USER_META])
        for base in bases:
            if not BASE_NAME.match(base):
                raise InputError(f"VM {rid}: meta {BASE_META}={base!r} is not a valid base name "
                                 "(letters, digits, '_', '.', '-')")
        meta = self.meta(element)
        priority = _saturated(meta.get("priority", "0"), f"{rid} priority", signed=True)
        where = self.active.get(rid, set())
        banned: dict[str, str] = {}
        for base in dict.fromkeys(bases[1:]):
            for node in self.nodes.values():
                if base not in node.bases:
                    banned[node.name] = f"base {base!r} of a group member not present"
        return VM(name=rid, cpu=cpu, memory=memory, user=users[0] if users else None,
                  base=bases[0] if bases else None, node=min(where) if where else None,
                  priority=priority, stickiness=min(stickiness, SCORE_INFINITY),
                  banned=frozenset(banned), why_banned=tuple(sorted(banned.items())))

    # -- constraints ---------------------------------------------------------------------

    def location_effects(self) -> tuple[dict[str, dict[str, str]], dict[str, set[str]], dict[str, set[str]]]:
        """(resource -> {banned node: why}, resource -> +INFINITY nodes, resource -> nodes with a
        positive score) from every rsc_location, by node, rule, pattern or resource set."""
        bans: dict[str, dict[str, str]] = {}
        required: dict[str, set[str]] = {}
        positive: dict[str, set[str]] = {}
        for loc in self.config.iterfind("constraints/rsc_location"):
            cid = _require_id(loc)
            if cid.startswith(CONSTRAINT_PREFIX) and not (loc.get("score", "").strip().lower()
                                                         in ("-infinity", "-inf")):
                continue        # our own preferences: replaced by the new plan
            if loc.get("role") not in (None, "Started", "Stopped"):
                continue
            targets = self._location_targets(loc)
            if not targets:
                continue
            by_node: dict[str, int] = {}
            if loc.get("node"):
                by_node[loc.get("node")] = parse_score(loc.get("score"), f"constraint {cid} score")
            for rule in loc.iterfind("rule"):
                if rule.get("role") not in (None, "Started", "Stopped"):
                    continue
                if rule.get("score") is None:
                    continue            # score-attribute: a preference read from the node
                score = parse_score(rule.get("score"), f"rule {rule.get('id')} score")
                for node in self.nodes:
                    try:
                        hit = rules.matches(rule, self.node_attributes[node])
                    except rules.Unsupported as err:
                        if abs(score) >= SCORE_INFINITY:
                            raise InputError(f"constraint {cid}: cannot evaluate the mandatory rule ({err}); "
                                             "refusing to plan around it") from None
                        break
                    if hit:
                        by_node[node] = by_node.get(node, 0) + score
            for rsc in targets:
                for node, score in by_node.items():
                    if score <= -SCORE_INFINITY:
                        bans.setdefault(rsc, {})[node] = (
                            "drained by ravada-place" if cid.startswith(CONSTRAINT_PREFIX)
                            else f"banned by an administrator's constraint ({cid})")
                    elif score >= SCORE_INFINITY:
                        required.setdefault(rsc, set()).add(node)
                    if score > 0:
                        positive.setdefault(rsc, set()).add(node)
        return bans, required, positive

    def _location_targets(self, loc: etree._Element) -> list[str]:
        if loc.get("rsc"):
            return [loc.get("rsc")]
        if loc.get("rsc-pattern") is not None:
            try:
                pattern = re.compile(loc.get("rsc-pattern"))
            except re.error as err:
                raise InputError(f"constraint {loc.get('id')}: bad rsc-pattern: {err}") from None
            return [rid for rid in self.top_ids if pattern.search(rid)]
        return [ref.get("id") for ref in loc.iterfind("resource_set/resource_ref") if ref.get("id")]

    def fail_bans(self) -> dict[str, dict[str, str]]:
        """The failure map: node where a resource's fail count reached its migration-threshold."""
        counts: dict[tuple[str, str], int] = {}
        for state in self.cib.iterfind("status/node_state"):
            node = state.get("uname")
            for nv in state.iterfind("transient_attributes/instance_attributes/nvpair"):
                match = FAIL_COUNT.match(nv.get("name", ""))
                if match and node:
                    key = (match.group(1), node)
                    counts[key] = min(SCORE_INFINITY, counts.get(key, 0)
                                      + _saturated(nv.get("value", "0"), f"{nv.get('name')} on {node}"))
        thresholds = {}
        for primitive in self.config.iter("primitive"):
            parent = primitive.getparent()
            meta = self.meta(primitive, parent if parent is not None and parent.tag == "group" else None)
            thresholds[primitive.get("id")] = _saturated(meta.get("migration-threshold", "INFINITY"),
                                                         f"{primitive.get('id')} migration-threshold")
        bans: dict[str, dict[str, str]] = {}
        for (rsc, node), count in counts.items():
            threshold = thresholds.get(rsc, SCORE_INFINITY)
            if threshold > 0 and count >= threshold:
                bans.setdefault(rsc, {})[node] = f"failed here {count} time(s), migration-threshold {threshold}"
        return bans

    def colocations(self, owner: dict[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]],
                                                          list[tuple[str, str, int]]]:
        """Mandatory colocations: (VM unit, VM unit) pairs together, pairs apart, and
        (VM unit, other resource, +-INFINITY) for non-VM partners."""
        together, apart, others = [], [], []
        for col in self.config.iterfind("constraints/rsc_colocation"):
            cid = _require_id(col)
            if col.get("score") is None:
                continue
            score = parse_score(col.get("score"), f"constraint {cid} score")
            if abs(score) < SCORE_INFINITY:
                continue
            if col.find("resource_set") is not None:
                refs = [ref.get("id") for ref in col.iter("resource_ref")]
                if any(ref in owner for ref in refs):
                    raise InputError(f"constraint {cid}: mandatory colocation sets with VMs are not supported; "
                                     "write it as rsc/with-rsc pairs")
                continue
            rsc, with_rsc = col.get("rsc"), col.get("with-rsc")
            if rsc in owner and with_rsc in owner:
                if owner[rsc] != owner[with_rsc]:
                    (together if score > 0 else apart).append((owner[rsc], owner[with_rsc]))
            elif rsc in owner and with_rsc:
                others.append((owner[rsc], with_rsc, score))
            elif with_rsc in owner and rsc and score < 0:
                others.append((owner[with_rsc], rsc, score))
        return together, apart, others

    # -- everything ----------------------------------------------------------------------

    def cluster(self) -> Cluster:
        self.read_nodes()
        units, owner = self.read_resources()
        bans, required, positive = self.location_effects()
        for rsc, nodes in self.fail_bans().items():
            for node, why in nodes.items():
                bans.setdefault(rsc, {}).setdefault(node, why)
        self.reserve_collections(bans)
        together, apart, others = self.colocations(owner)
        members: dict[str, list[str]] = {}
        for rsc, unit in owner.items():
            members.setdefault(unit, []).append(rsc)
        result = []
        for vm in units:
            why = dict(vm.why_banned)
            allowed: set[str] | None = None
            for rsc in members[vm.name]:
                for node, reason in bans.get(rsc, {}).items():
                    why.setdefault(node, reason)
                wanted = {n for n in required.get(rsc, ()) if n in self.nodes and not self.nodes[n].unavailable}
                if wanted:
                    allowed = wanted if allowed is None else allowed & wanted
            if not self.symmetric:
                opted = set().union(*(positive.get(rsc, set()) for rsc in members[vm.name]))
                allowed = opted if allowed is None else allowed & opted
            for unit, partner, score in others:
                if unit != vm.name or self.status is None:
                    continue
                there = self.active.get(partner, set())
                if score > 0:
                    allowed = there if allowed is None else allowed & there
                else:
                    for node in there:
                        why.setdefault(node, f"-INFINITY colocation with {partner}")
            why = {node: reason for node, reason in why.items() if node in self.nodes}
            result.append(replace(vm, banned=frozenset(why), why_banned=tuple(sorted(why.items())),
                                  allowed=frozenset(allowed) if allowed is not None else None))
        cluster = Cluster(dict(self.nodes), {})
        for vm in merge_colocated(result, together, apart, self.nodes):
            cluster.vms[vm.name] = vm
            for rsc in vm.resources:
                cluster.aliases.update({member: vm.name for member in members.get(rsc, [rsc])})
        cluster.validate()
        return cluster


def _saturated(text: str, where: str, signed: bool = False) -> int:
    """A Pacemaker integer that may be INFINITY (stickiness, thresholds, fail counts, priority)."""
    value = parse_score(text, where)
    if not signed and value < 0:
        raise InputError(f"{where}: negative value {text!r}")
    return value


def _is_vm(primitive: etree._Element) -> bool:
    return "hv_memory" in nvpairs(primitive, "utilization") or primitive.get("type") in VM_AGENT_TYPES


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


def cluster_from_cib(cib: etree._Element, status: etree._Element | None) -> Cluster:
    """`status` is crm_mon's XML for the same snapshot; None means "plan as if every node
    were online" (a saved configuration without status section)."""
    return _Reader(cib, status).cluster()


def read_cluster(path: str | None) -> tuple[etree._Element, Cluster, bool]:
    """(CIB, cluster, has_status) from a CIB file or the live cluster."""
    cib = load_cib(path)
    with_status = has_node_status(cib)
    status = pacemaker.status_of(cib) if with_status else None
    return cib, cluster_from_cib(cib, status), with_status
