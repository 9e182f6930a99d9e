"""Capacity bookkeeping: what each node has left while a plan is being built."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .model import VM, Cluster, Node


@dataclass(frozen=True)
class Limits:
    """Overcommit ratios: a node accepts VMs while demand <= capacity x ratio."""
    cpu_ratio: float = 1.0
    memory_ratio: float = 1.0


@dataclass
class NodeLoad:
    node: Node
    cpu: int = 0
    memory: int = 0
    vms: int = 0
    users: Counter = field(default_factory=Counter)

    def copy(self) -> "NodeLoad":
        return NodeLoad(self.node, self.cpu, self.memory, self.vms, Counter(self.users))

    def cpu_capacity(self, limits: Limits) -> float:
        return (self.node.cpu or 0) * limits.cpu_ratio

    def memory_capacity(self, limits: Limits) -> float:
        return (self.node.memory or 0) * limits.memory_ratio


class PlacementState:
    """Loads of every node; each assignment consumes capacity, so a batch is burst-safe.

    It also keeps, over the usable nodes, the sums of the cpu and memory fractions and of
    their squares, so the spread (standard deviation) after any single change is O(1).
    """

    def __init__(self, cluster: Cluster, limits: Limits) -> None:
        self.cluster = cluster
        self.limits = limits
        # Resources that are not VMs (clone instances...) take their share first.
        self.loads = {name: NodeLoad(node, *node.reserved) for name, node in cluster.nodes.items()}
        self.closed: dict[str, str] = {}      # node -> why it takes nothing in this plan
        self.where: dict[str, str] = {}       # unit -> node, running or planned
        self.usable_set: set[str] = set()     # filled by _recount, with the running sums
        self.counts = [0, 0]
        for vm in cluster.vms.values():
            if vm.node is not None:
                self._change(vm, vm.node, 1)
        self._recount()

    def copy(self) -> "PlacementState":
        other = object.__new__(PlacementState)
        other.__dict__.update(self.__dict__)
        other.loads = {name: load.copy() for name, load in self.loads.items()}
        other.closed, other.where = dict(self.closed), dict(self.where)
        other.sums, other.squares, other.counts = list(self.sums), list(self.squares), list(self.counts)
        return other

    def _recount(self) -> None:
        self.usable = [node for node in self.loads if self.unusable(node) is None]
        self.usable_set = set(self.usable)
        fractions = [self.fraction(node) for node in self.usable]
        self.sums = [sum(f[i] for f in fractions) for i in (0, 1)]
        self.squares = [sum(f[i] ** 2 for f in fractions) for i in (0, 1)]
        counts = [self.loads[node].vms for node in self.usable]
        self.counts = [sum(counts), sum(c * c for c in counts)]

    def _change(self, vm: VM, node: str, sign: int) -> None:
        load = self.loads[node]
        if node in self.usable_set:
            self.counts[0] += sign
            self.counts[1] += (load.vms + sign) ** 2 - load.vms ** 2
        load.cpu += sign * vm.cpu
        load.memory += sign * vm.memory
        load.vms += sign
        if vm.user:
            load.users[vm.user] += sign
        if sign > 0:
            self.where[vm.name] = node
        elif self.where.get(vm.name) == node:
            del self.where[vm.name]

    def add(self, vm: VM, node: str) -> None:
        self.sums, self.squares = self.spread_sums_after([(node, vm.cpu, vm.memory)])
        self._change(vm, node, 1)

    def remove(self, vm: VM, node: str) -> None:
        self.sums, self.squares = self.spread_sums_after([(node, -vm.cpu, -vm.memory)])
        self._change(vm, node, -1)

    def counts_after(self, changes: list[tuple[str, int]]) -> tuple[float, float]:
        """(sum, sum of squares) of VM counts over the usable nodes after (node, +-n) changes."""
        total, squares = self.counts
        for node, delta in changes:
            if node in self.usable_set:
                now = self.loads[node].vms
                total += delta
                squares += (now + delta) ** 2 - now ** 2
        return total, squares

    def blocked(self, vm: VM) -> set[str]:
        """Nodes `vm` may not share now: where a unit it must keep apart from is."""
        return {self.where[other] for other in vm.apart if other in self.where}

    def close(self, node: str, reason: str) -> None:
        self.closed[node] = reason
        self._recount()

    def spread_sums_after(self, changes: list[tuple[str, int, int]]) -> tuple[list[float], list[float]]:
        """The running sums if each (node, cpu, memory) change were made."""
        sums, squares = list(self.sums), list(self.squares)
        for node, cpu, memory in changes:
            if node not in self.usable_set:
                continue
            before = self.fraction(node)
            after = self.fraction(node, cpu, memory)
            for i in (0, 1):
                sums[i] += after[i] - before[i]
                squares[i] += after[i] ** 2 - before[i] ** 2
        return sums, squares

    def spread(self, sums: list[float] | None = None, squares: list[float] | None = None) -> tuple[float, float]:
        """Standard deviation of the (cpu, memory) fractions over the usable nodes."""
        sums = self.sums if sums is None else sums
        squares = self.squares if squares is None else squares
        n = len(self.usable) or 1
        return tuple(math.sqrt(max(squares[i] / n - (sums[i] / n) ** 2, 0.0)) for i in (0, 1))

    def unusable(self, node: str) -> str | None:
        """Why `node` takes no VM at all in this plan, or None."""
        load = self.loads[node]
        if node in self.closed:
            return self.closed[node]
        if load.node.unavailable:
            return load.node.unavailable
        if load.node.cpu is None or load.node.memory is None:
            return "no utilization cpu/hv_memory published for this node"
        return None

    def eligibility(self, vm: VM, node: str) -> str | None:
        """Why `node` can never host `vm` in this plan, whatever the load; None if it can."""
        reason = self.unusable(node)
        if reason:
            return reason
        if vm.allowed is not None and node not in vm.allowed:
            return "a mandatory constraint (+INFINITY location or colocation) puts it elsewhere"
        if node in vm.banned:
            return dict(vm.why_banned).get(node, "banned by an administrator's constraint")
        if vm.base and vm.base not in self.loads[node].node.bases:
            return f"base {vm.base!r} not present (node attribute ravada-base-{vm.base} not set)"
        return None

    def fits(self, node: str, cpu: int, memory: int, check_cpu: bool = True) -> bool:
        """The fast form of `shortage(...) is None` (it runs nodes x VMs times)."""
        load = self.loads[node]
        if load.memory + memory > (load.node.memory or 0) * self.limits.memory_ratio:
            return False
        return not check_cpu or load.cpu + cpu <= (load.node.cpu or 0) * self.limits.cpu_ratio

    def shortage(self, node: str, cpu: int, memory: int, check_cpu: bool = True) -> str | None:
        """Why `node` cannot take this much more now, or None if it fits."""
        load = self.loads[node]
        free_memory = load.memory_capacity(self.limits) - load.memory
        if memory > free_memory:
            return f"memory: needs {memory} MiB, {max(free_memory, 0):g} free"
        free_cpu = load.cpu_capacity(self.limits) - load.cpu
        if check_cpu and cpu > free_cpu:
            return f"cpu: needs {cpu}, {max(free_cpu, 0):g} free"
        return None

    def fraction(self, node: str, cpu_extra: int = 0, memory_extra: int = 0) -> tuple[float, float]:
        """(cpu, memory) use of a node as fractions of its capacity (after overcommit)."""
        load = self.loads[node]
        cpu_cap = load.cpu_capacity(self.limits) or 1.0
        memory_cap = load.memory_capacity(self.limits) or 1.0
        return (load.cpu + cpu_extra) / cpu_cap, (load.memory + memory_extra) / memory_cap
