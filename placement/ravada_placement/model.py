"""The cluster as the planner sees it: nodes with capacity, VMs with demand."""
from __future__ import annotations

from dataclasses import dataclass, field


class InputError(Exception):
    """The cluster description cannot be used (malformed, inconsistent or out of range)."""


@dataclass(frozen=True)
class Node:
    name: str
    cpu: int | None            # physical CPUs offered to VMs (node utilization `cpu`)
    memory: int | None         # MiB offered to VMs (node utilization `hv_memory`)
    bases: frozenset[str] = frozenset()
    # Why the node cannot take VMs at all (offline, standby, maintenance), or None.
    unavailable: str | None = None


@dataclass(frozen=True)
class VM:
    name: str
    cpu: int                   # vCPUs (resource utilization `cpu`)
    memory: int                # MiB (resource utilization `hv_memory`)
    user: str | None = None
    base: str | None = None
    node: str | None = None    # where it runs now; None when stopped or new
    banned: frozenset[str] = frozenset()   # nodes an administrator's -INFINITY forbids


@dataclass
class Cluster:
    nodes: dict[str, Node] = field(default_factory=dict)   # in CIB / file order
    vms: dict[str, VM] = field(default_factory=dict)

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


def require_int(value: object, where: str) -> int:
    """An integer from CIB text or JSON; Pacemaker utilization is integer-only."""
    if isinstance(value, bool):
        raise InputError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    else:
        raise InputError(f"{where}: expected an integer, got {value!r}")
    if number < 0:
        raise InputError(f"{where}: negative value {number}")
    return number
