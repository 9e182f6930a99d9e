"""Planning units from VMs bound by mandatory colocations (a group is read as one unit
already): what must share a node is placed as one, what must not is kept apart."""
from __future__ import annotations

from dataclasses import replace

from .model import SCORE_INFINITY, VM, Node


def merge_colocated(units: list[VM], together: list[tuple[str, str]], apart: list[tuple[str, str]],
           nodes: dict[str, Node]) -> list[VM]:
    """VM units bound by mandatory colocations become one unit (running ones together on one
    node form one running unit, and pin the stopped ones to that node); -INFINITY pairs keep
    apart."""
    order = {vm.name: i for i, vm in enumerate(units)}
    parent = {vm.name: vm.name for vm in units}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for a, b in together:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb, key=order.get)] = min(ra, rb, key=order.get)
    components: dict[str, list[VM]] = {}
    for vm in units:
        components.setdefault(root(vm.name), []).append(vm)
    merged: list[VM] = []
    renamed: dict[str, str] = {}
    for group in components.values():
        running = [vm for vm in group if vm.node]
        stopped = [vm for vm in group if not vm.node]
        if len(group) == 1:
            merged.extend(group)
            continue
        if len({vm.node for vm in running}) == 1:
            # Running together: they move together (rebalance, drain).
            unit = joined(running, nodes, node=running[0].node)
            renamed.update({vm.name: unit.name for vm in running})
            merged.append(unit)
        else:
            merged.extend(running)
        if not stopped:
            continue
        # Stopped ones join the running ones' node.
        unit = joined(stopped, nodes, allowed={vm.node for vm in running} if running else None)
        for vm in stopped:
            renamed[vm.name] = unit.name
        merged.append(unit)
    apart_of: dict[str, set[str]] = {}
    for a, b in apart:
        a, b = renamed.get(a, a), renamed.get(b, b)
        apart_of.setdefault(a, set()).add(b)
        apart_of.setdefault(b, set()).add(a)
    return [replace(vm, apart=frozenset(apart_of[vm.name])) if vm.name in apart_of else vm for vm in merged]


def joined(vms: list[VM], nodes: dict[str, Node], node: str | None = None,
            allowed: set[str] | None = None) -> VM:
    """VMs bound by mandatory colocations as one unit: sizes summed, every ban and base kept."""
    if len(vms) == 1 and allowed is None:
        return vms[0]
    for vm in vms:
        if vm.allowed is not None:
            allowed = set(vm.allowed) if allowed is None else allowed & vm.allowed
    why: dict[str, str] = {}
    for vm in vms:
        for name, reason in vm.why_banned:
            why.setdefault(name, f"{reason} (for {vm.name})")
    bases = [vm.base for vm in vms if vm.base]
    for base in dict.fromkeys(bases[1:]):
        for other in nodes.values():
            if base not in other.bases:
                why.setdefault(other.name, f"base {base!r} of a colocated VM not present")
    return VM(name="+".join(vm.name for vm in vms),
              cpu=sum(vm.cpu for vm in vms), memory=sum(vm.memory for vm in vms),
              user=next((vm.user for vm in vms if vm.user), None),
              base=bases[0] if bases else None, node=node,
              banned=frozenset(why), why_banned=tuple(sorted(why.items())),
              priority=max(vm.priority for vm in vms),
              members=tuple(rsc for vm in vms for rsc in vm.resources),
              allowed=frozenset(allowed) if allowed is not None else None,
              stickiness=min(sum(vm.stickiness for vm in vms), SCORE_INFINITY))
