"""Placement policies: which eligible node a VM prefers.

A policy ranks nodes with a key (lower is better); the planner appends the node name, so
ties always resolve the same way (deterministic plans).  Capacity and base checks live in
`PlacementState`, shared by every policy.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict

from .model import VM
from .state import PlacementState


class Policy:
    name = ""
    # Whether vCPUs are a hard limit (Ravada only ever checks memory).
    check_cpu = True
    # Whether a batch that cannot all fit is planned for the most VMs placed (Ravada's rule
    # serves requests in order, as Ravada does).
    maximize = True
    # What `objective` measures (rebalance lowers it; plans of equal size compare by it).
    objective_name = "imbalance"

    def objective(self, state: PlacementState, changes: list[tuple[str, int, int, int]] = ()) -> float:
        """The policy's measure of the whole cluster (lower is better) after (node, cpu,
        memory, VM count) changes; O(1) per change."""
        raise NotImplementedError

    def arrange(self, order: list[VM]) -> list[VM]:
        """A batch order adjusted to the policy (same-user keeps a user's VMs consecutive)."""
        return order

    def orders(self, vms: list[VM], state: PlacementState) -> list[list[VM]]:
        """The orders to try a batch in, best first; the planner keeps the first that places
        everything, else the one that places most."""
        return [list(vms)]

    def begin_batch(self, vms: list[VM]) -> None:
        """Told the batch about to be placed, in order."""

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        raise NotImplementedError

    def describe(self, key: tuple) -> str:
        raise NotImplementedError

    def on_assign(self, vm: VM, node: str) -> None:
        """Told about each assignment of the batch (for policies that remember groups)."""


def largest_first_then_arrival(vms: list[VM], state: PlacementState) -> list[list[VM]]:
    """First-fit decreasing by dominant share of the cluster (big VMs are placed while big
    holes still exist, which lets a batch fit where Pacemaker's CIB order strands one); when
    the batch does not fit anyway, request order may place more VMs, so it is tried second."""
    total_cpu = sum(load.node.cpu or 0 for load in state.loads.values()) or 1
    total_memory = sum(load.node.memory or 0 for load in state.loads.values()) or 1
    decreasing = sorted(vms, key=lambda vm: (-max(vm.cpu / total_cpu, vm.memory / total_memory), vm.name))
    return [decreasing, list(vms)]


def tightest(state: PlacementState, vm: VM, node: str) -> tuple:
    """Best fit: the node left fullest (its dominant resource) after taking the VM, so the
    big holes stay for big VMs; used to place the most VMs of a batch that cannot all fit."""
    cpu_after, memory_after = state.fraction(node, vm.cpu, vm.memory)
    return (-round(max(cpu_after, memory_after), 9),)


class RavadaPolicy(Policy):
    """Ravada's `_balance_free_memory`: fewest running VMs, then most free memory; only
    memory is checked; requests are served in the order given.

    Two upstream accidents are deliberately not copied: the `/^[01]+\\./` early exit (which
    takes a node with 10, 11, 100... VMs for an empty one) and the random node order.
    """
    name = "ravada"
    check_cpu = False
    maximize = False
    objective_name = "VM-count spread"

    def objective(self, state: PlacementState, changes: list[tuple[str, int, int, int]] = ()) -> float:
        """Standard deviation of the VM counts per node (Ravada balances by count)."""
        total, squares = state.counts_after([(node, count) for node, _, _, count in changes])
        n = len(state.usable) or 1
        return math.sqrt(max(squares / n - (total / n) ** 2, 0.0))

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

    def orders(self, vms: list[VM], state: PlacementState) -> list[list[VM]]:
        return largest_first_then_arrival(vms, state)

    def objective(self, state: PlacementState, changes: list[tuple[str, int, int, int]] = ()) -> float:
        spread = state.spread(*state.spread_sums_after([change[:3] for change in changes]))
        return self.cpu_weight * spread[0] + self.memory_weight * spread[1]

    def key(self, state: PlacementState, vm: VM, node: str) -> tuple:
        # The O(1) update of state.spread() for one node, inlined: this runs nodes x VMs times.
        load = state.loads[node]
        cpu_cap = load.cpu_capacity(state.limits) or 1.0
        memory_cap = load.memory_capacity(state.limits) or 1.0
        cpu_now, memory_now = load.cpu / cpu_cap, load.memory / memory_cap
        cpu_after, memory_after = (load.cpu + vm.cpu) / cpu_cap, (load.memory + vm.memory) / memory_cap
        n = len(state.usable) or 1
        cpu_sum = state.sums[0] + cpu_after - cpu_now
        memory_sum = state.sums[1] + memory_after - memory_now
        cpu_squares = state.squares[0] + cpu_after * cpu_after - cpu_now * cpu_now
        memory_squares = state.squares[1] + memory_after * memory_after - memory_now * memory_now
        imbalance = (self.cpu_weight * math.sqrt(max(cpu_squares / n - (cpu_sum / n) ** 2, 0.0))
                     + self.memory_weight * math.sqrt(max(memory_squares / n - (memory_sum / n) ** 2, 0.0)))
        # Rounded so float noise never outranks the tie-breaks.
        return (round(imbalance, 9), state.loads[node].vms, round(max(cpu_after, memory_after), 9))

    def describe(self, key: tuple) -> str:
        return f"imbalance {key[0]:.6f} after, {key[1]} VMs here, fullest resource {key[2]:.0%} after"


class PackPolicy(Policy):
    """Use as few nodes as possible: best fit on nodes already in use; a new node is opened
    only when none fits, the largest first."""
    name = "pack"
    objective_name = "pack spread"

    def objective(self, state: PlacementState, changes: list[tuple[str, int, int, int]] = ()) -> float:
        """Usable nodes minus the mean of the squared cpu and memory fractions summed over
        them: it falls as load concentrates, and equals the number of empty nodes when
        every node is either full or empty."""
        _, squares = state.spread_sums_after([change[:3] for change in changes])
        return len(state.usable) - (squares[0] + squares[1]) / 2

    def orders(self, vms: list[VM], state: PlacementState) -> list[list[VM]]:
        return largest_first_then_arrival(vms, state)

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
        self.maximize = inner.maximize
        self.objective_name = inner.objective_name
        self.pending: dict[str, Counter] = defaultdict(Counter)

    def orders(self, vms: list[VM], state: PlacementState) -> list[list[VM]]:
        return [self._grouped(order) for order in self.inner.orders(vms, state)]

    def arrange(self, order: list[VM]) -> list[VM]:
        return self._grouped(self.inner.arrange(order))

    def objective(self, state: PlacementState, changes: list[tuple[str, int, int, int]] = ()) -> float:
        return self.inner.objective(state, changes)

    @staticmethod
    def _grouped(order: list[VM]) -> list[VM]:
        """A user's VMs made consecutive, where the user's first VM of `order` stood."""
        first_seen: dict[str, int] = {}
        for rank, vm in enumerate(order):
            if vm.user:
                first_seen.setdefault(vm.user, rank)
        ranked = sorted(enumerate(order), key=lambda item: (first_seen[item[1].user] if item[1].user else item[0],
                                                            item[0]))
        return [vm for _, vm in ranked]

    def begin_batch(self, vms: list[VM]) -> None:
        self.pending = defaultdict(Counter)
        for vm in vms:
            if vm.user:
                self.pending[vm.user].update(cpu=vm.cpu, memory=vm.memory)
        self.inner.begin_batch(vms)

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


def make_policy(name: str, same_user: bool = False, weights: tuple[float, float] = (1.0, 1.0)) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    policy = BalancedPolicy(*weights) if name == "balanced" else POLICIES[name]()
    return SameUserPolicy(policy) if same_user else policy
