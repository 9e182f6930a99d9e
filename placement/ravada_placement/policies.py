"""Placement policies: which eligible node a VM prefers.

A policy ranks nodes with a key (lower is better); the planner appends the node name, so
ties always resolve the same way (deterministic plans).  Capacity and base checks live in
`PlacementState`, shared by every policy.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from .model import VM
from .state import PlacementState


class Policy:
    name = ""
    # Whether vCPUs are a hard limit (Ravada only ever checks memory).
    check_cpu = True

    def order(self, vms: list[VM], state: PlacementState) -> list[VM]:
        """The order a batch is placed in."""
        return list(vms)

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        raise NotImplementedError

    def describe(self, key: tuple) -> str:
        raise NotImplementedError

    def on_assign(self, vm: VM, node: str) -> None:
        """Told about each assignment of the batch (for policies that remember groups)."""


def largest_first(vms: list[VM], state: PlacementState) -> list[VM]:
    """First-fit decreasing by dominant share of the cluster: big VMs are placed while big
    holes still exist, which is what lets a batch fit where a greedy CIB order fails."""
    total_cpu = sum(load.node.cpu or 0 for load in state.loads.values()) or 1
    total_memory = sum(load.node.memory or 0 for load in state.loads.values()) or 1
    return sorted(vms, key=lambda vm: (-max(vm.cpu / total_cpu, vm.memory / total_memory), vm.name))


class RavadaPolicy(Policy):
    """Ravada's `_balance_free_memory`: fewest running VMs, then most free memory; only
    memory is checked; requests are served in the order given.

    Two upstream accidents are deliberately not copied: the `/^[01]+\\./` early exit (which
    takes a node with 10, 11, 100... VMs for an empty one) and the random node order.
    """
    name = "ravada"
    check_cpu = False

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        load = state.loads[node]
        return (load.vms, -(load.memory_capacity(state.limits) - load.memory))

    def describe(self, key: tuple) -> str:
        return f"running VMs {key[0]}, free memory {-key[1]:g} MiB"


class BalancedPolicy(Policy):
    """Spread cpu and memory as fractions of each node: choose the node after which the
    weighted standard deviation of the per-node fractions is lowest (Ganeti's measure), so big
    and small nodes fill at the same rate; the VM count breaks ties."""
    name = "balanced"

    def __init__(self, cpu_weight: float = 1.0, memory_weight: float = 1.0) -> None:
        self.cpu_weight = cpu_weight
        self.memory_weight = memory_weight

    def order(self, vms: list[VM], state: PlacementState) -> list[VM]:
        return largest_first(vms, state)

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        cpu_spread, memory_spread = state.spread(*state.spread_sums_after([(node, vm.cpu, vm.memory)]))
        imbalance = self.cpu_weight * cpu_spread + self.memory_weight * memory_spread
        cpu_after, memory_after = state.fraction(node, vm.cpu, vm.memory)
        # Rounded so float noise never outranks the tie-breaks.
        return (round(imbalance, 9), state.loads[node].vms, round(max(cpu_after, memory_after), 9))

    def describe(self, key: tuple) -> str:
        return f"imbalance {key[0]:.6f} after, {key[1]} VMs here, fullest resource {key[2]:.0%} after"


class PackPolicy(Policy):
    """Use as few nodes as possible: best fit on nodes already in use; a new node is opened
    only when none fits, the largest first."""
    name = "pack"

    def order(self, vms: list[VM], state: PlacementState) -> list[VM]:
        return largest_first(vms, state)

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        load = state.loads[node]
        if load.vms:
            cpu_after, memory_after = state.fraction(node, vm.cpu, vm.memory)
            return (0, -round(max(cpu_after, memory_after), 9))
        return (1, -load.memory_capacity(state.limits))

    def describe(self, key: tuple) -> str:
        if key[0] == 0:
            return f"in use, fullest resource {-key[1]:.0%} after"
        return f"empty node, {-key[1]:g} MiB"


class SameUserPolicy(Policy):
    """Keep one user's VMs together on top of another policy: first a node where the user
    already has VMs (most first), then a node where all the user's pending VMs of this batch
    fit at once, then whatever the inner policy prefers."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = f"{inner.name}+same-user"
        self.check_cpu = inner.check_cpu
        self.pending: dict[str, Counter] = defaultdict(Counter)

    def order(self, vms: list[VM], state: PlacementState) -> list[VM]:
        inner_order = self.inner.order(vms, state)
        rank = {vm.name: i for i, vm in enumerate(inner_order)}
        first_seen: dict[str, int] = {}
        for vm in inner_order:
            if vm.user:
                first_seen.setdefault(vm.user, rank[vm.name])
                self.pending[vm.user].update(cpu=vm.cpu, memory=vm.memory)
        # A user's VMs become consecutive, placed where the user's biggest VM would start.
        return sorted(inner_order, key=lambda vm: (first_seen[vm.user] if vm.user else rank[vm.name],
                                                  rank[vm.name]))

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        inner = self.inner.key(state, vm, node)
        if not vm.user:
            return (2, 0) + inner
        together = state.loads[node].users[vm.user]
        if together:
            return (0, -together) + inner
        group = self.pending[vm.user]
        fits_group = state.shortage(node, group["cpu"], group["memory"], self.check_cpu) is None
        return (1 if fits_group else 2, 0) + inner

    def describe(self, key: tuple) -> str:
        affinity = {0: f"user already has {-key[1]} VM(s) here", 1: "all the user's new VMs fit",
                    2: "no user affinity"}[key[0]]
        return f"{affinity}; {self.inner.describe(key[2:])}"

    def on_assign(self, vm: VM, node: str) -> None:
        if vm.user:
            self.pending[vm.user].subtract(cpu=vm.cpu, memory=vm.memory)
        self.inner.on_assign(vm, node)


POLICIES = {"ravada": RavadaPolicy, "balanced": BalancedPolicy, "pack": PackPolicy}


def make_policy(name: str, same_user: bool = False) -> Policy:
    try:
        policy = POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})") from None
    return SameUserPolicy(policy) if same_user else policy
