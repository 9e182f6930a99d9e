"""The cluster as the planner sees it: nodes with capacity, VMs with demand."""
from __future__ import annotations

import re
from dataclasses import dataclass, field


class InputError(Exception):
    """The cluster description cannot be used (malformed, inconsistent or out of range)."""


# Pacemaker's INFINITY: scores, stickiness and fail counts saturate here.
SCORE_INFINITY = 1_000_000
# Larger sizes than this are typing errors (2^40 MiB is a zettabyte), not clusters.
MAX_SIZE = 2 ** 40


@dataclass(frozen=True)
class Node:
    name: str
    cpu: int | None            # physical CPUs offered to VMs (node utilization `cpu`)
    memory: int | None         # MiB offered to VMs (node utilization `hv_memory`)
    bases: frozenset[str] = frozenset()
    # Why the node cannot take VMs at all (offline, standby, maintenance), or None.
    unavailable: str | None = None
    # Taken by resources that are not VMs (clone instances, other primitives): (cpu, MiB).
    reserved: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class VM:
    """A unit of placement: one VM, a group, or VMs bound together by a mandatory colocation
    (then `cpu`/`memory` are the sums and `members` the resources that get constraints)."""
    name: str
    cpu: int                   # vCPUs (resource utilization `cpu`)
    memory: int                # MiB (resource utilization `hv_memory`)
    user: str | None = None
    base: str | None = None
    node: str | None = None    # where it runs now; None when stopped or new
    # Nodes it may never run on: an admin's -INFINITY (node, pattern or rule), a failure
    # map entry (fail count at migration-threshold), a base another member lacks.
    banned: frozenset[str] = frozenset()
    priority: int = 0          # Pacemaker's `priority` meta attribute: higher placed first
    members: tuple[str, ...] = ()          # resources to constrain; () means (name,)
    allowed: frozenset[str] | None = None  # only these nodes (mandatory colocation, +INFINITY)
    apart: frozenset[str] = frozenset()    # units it must not share a node with (-INFINITY colocation)
    stickiness: int = 0        # resource-stickiness while it runs (summed over a group)
    why_banned: tuple[tuple[str, str], ...] = ()   # (node, reason) for each banned node

    @property
    def resources(self) -> tuple[str, ...]:
        return self.members or (self.name,)


@dataclass
class Cluster:
    nodes: dict[str, Node] = field(default_factory=dict)   # in CIB / file order
    vms: dict[str, VM] = field(default_factory=dict)
    # Resource id -> the unit it is planned in, for members of a group or a colocated unit.
    aliases: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        for node in self.nodes.values():
            for what, value in (("cpu", node.cpu), ("hv_memory", node.memory)):
                if value is not None and value < 0:
                    raise InputError(f"node {node.name}: negative {what} capacity {value}")
        for vm in self.vms.values():
            if vm.cpu < 0 or vm.memory < 0:
                raise InputError(f"VM {vm.name}: negative size (cpu={vm.cpu}, hv_memory={vm.memory})")
            if vm.node is not None and vm.node not in self.nodes:
                raise InputError(f"VM {vm.name} runs on unknown node {vm.node!r}")

    def unit_of(self, resource: str) -> str | None:
        """The planning unit a resource (a VM, a group or a group member) belongs to."""
        if resource in self.vms:
            return resource
        return self.aliases.get(resource)


_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def require_int(value: object, where: str, maximum: int = MAX_SIZE) -> int:
    """A non-negative integer from CIB text or JSON; Pacemaker utilization is integer-only.
    ASCII digits only (str.isdigit() accepts '²' and other digits int() refuses)."""
    if isinstance(value, bool):
        raise InputError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        shown = value if not isinstance(value, str) or len(value) < 40 else value[:40] + "..."
        raise InputError(f"{where}: expected an integer, got {shown!r}")
    if number < 0:
        raise InputError(f"{where}: negative value {number}")
    if number > maximum:
        raise InputError(f"{where}: {number} is out of range (at most {maximum})")
    return number


def parse_score(text: str | None, where: str) -> int:
    """A Pacemaker score ("INFINITY", "-INFINITY", "+INFINITY", "123"), saturated at INFINITY."""
    value = (text or "0").strip().lower()
    if value in ("infinity", "+infinity", "inf", "+inf"):
        return SCORE_INFINITY
    if value in ("-infinity", "-inf"):
        return -SCORE_INFINITY
    if not _INTEGER.fullmatch(value):
        raise InputError(f"{where}: {text!r} is not a score")
    return max(-SCORE_INFINITY, min(SCORE_INFINITY, int(value)))
