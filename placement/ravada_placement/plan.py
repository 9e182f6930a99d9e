"""Plans: place a batch, drain a node, rebalance with a bounded number of migrations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .model import VM, Cluster, InputError
from .policies import Policy
from .state import Limits, PlacementState


@dataclass(frozen=True)
class Move:
    vm: str
    source: str | None     # None: the VM is not running now
    target: str
    gain: float | None = None   # rebalance: how much this move lowered the imbalance


@dataclass(frozen=True)
class Verdict:
    """One node as seen for one VM: excluded (and why) or ranked."""
    node: str
    excluded: str | None
    ranking: str = ""
    chosen: bool = False


@dataclass
class Plan:
    kind: str                                   # place | drain | rebalance
    moves: list[Move] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)   # VM -> why it has no node
    explanations: dict[str, list[Verdict]] = field(default_factory=dict)
    drained: str | None = None
    imbalance_before: float | None = None
    imbalance_after: float | None = None

    @property
    def complete(self) -> bool:
        return not self.failures


def assign_batch(state: PlacementState, policy: Policy, vms: list[VM], plan: Plan, explain: bool) -> None:
    """Place every VM of the batch in this order, each one consuming capacity before the next."""
    nodes = list(state.loads)
    eligible_by_need: dict[tuple, list[str]] = {}
    policy.begin_batch(vms)
    for vm in vms:
        need = (vm.base, vm.banned)
        if need not in eligible_by_need:
            eligible_by_need[need] = [node for node in nodes if state.eligibility(vm, node) is None]
        best: tuple | None = None
        for node in eligible_by_need[need]:
            if state.fits(node, vm.cpu, vm.memory, policy.check_cpu):
                key = policy.key(state, vm, node) + (node,)
                if best is None or key < best:
                    best = key
        if explain:
            plan.explanations[vm.name] = _verdicts(state, policy, vm, nodes, best[-1] if best else None)
        if best is None:
            plan.failures[vm.name] = _why_unplaceable(state, vm, policy)
        else:
            state.add(vm, best[-1])
            policy.on_assign(vm, best[-1])
            plan.moves.append(Move(vm.name, vm.node, best[-1]))


def _refusal(state: PlacementState, policy: Policy, vm: VM, node: str) -> str | None:
    return state.eligibility(vm, node) or state.shortage(node, vm.cpu, vm.memory, policy.check_cpu)


def _verdicts(state: PlacementState, policy: Policy, vm: VM, nodes: list[str], chosen: str | None) -> list[Verdict]:
    verdicts = []
    for node in nodes:
        reason = _refusal(state, policy, vm, node)
        ranking = "" if reason else policy.describe(policy.key(state, vm, node))
        verdicts.append(Verdict(node, reason, ranking, node == chosen))
    return verdicts


def best_batch(make_state: Callable[[], PlacementState], policy: Policy, vms: list[VM], kind: str,
               explain: bool, drained: str | None = None) -> Plan:
    """Try the policy's batch orders; keep the first plan that places every VM, else the one
    that places most (ties: the earlier order)."""
    best: Plan | None = None
    for order in policy.orders(vms, make_state()):
        plan = Plan(kind, drained=drained)
        assign_batch(make_state(), policy, order, plan, explain)
        if best is None or len(plan.moves) > len(best.moves):
            best = plan
        if plan.complete:
            break
    return best if best is not None else Plan(kind, drained=drained)


def _why_unplaceable(state: PlacementState, vm: VM, policy: Policy) -> str:
    sized = [load.node for load in state.loads.values() if load.node.cpu is not None and load.node.memory is not None]
    if not sized:
        return "no node publishes utilization cpu/hv_memory"
    cpu_fits = not policy.check_cpu or any(vm.cpu <= n.cpu * state.limits.cpu_ratio for n in sized)
    memory_fits = any(vm.memory <= n.memory * state.limits.memory_ratio for n in sized)
    if not memory_fits or not cpu_fits:
        biggest = max(sized, key=lambda n: (n.memory, n.cpu))
        return (f"larger than any node ({vm.cpu} vCPU / {vm.memory} MiB; biggest node {biggest.name}: "
                f"{biggest.cpu} CPU / {biggest.memory} MiB)")
    return "no node fits: " + "; ".join(f"{node}: {_refusal(state, policy, vm, node)}" for node in state.loads)


def plan_place(cluster: Cluster, policy: Policy, limits: Limits, names: list[str] | None = None,
               explain: bool = False) -> Plan:
    """Place new or stopped VMs (all of them, or the ones named)."""
    if names:
        unknown = [name for name in names if name not in cluster.vms]
        if unknown:
            raise InputError(f"unknown VM(s): {', '.join(unknown)}")
        running = [f"{name} (on {cluster.vms[name].node})" for name in names if cluster.vms[name].node]
        if running:
            raise InputError(f"already running, use drain or rebalance to move: {', '.join(running)}")
        batch = [cluster.vms[name] for name in dict.fromkeys(names)]
    else:
        batch = [vm for vm in cluster.vms.values() if vm.node is None]
    return best_batch(lambda: PlacementState(cluster, limits), policy, batch, "place", explain)


def plan_drain(cluster: Cluster, policy: Policy, limits: Limits, node: str, explain: bool = False) -> Plan:
    """Give every VM running on `node` a target elsewhere that fits."""
    if node not in cluster.nodes:
        raise InputError(f"unknown node {node!r} (known: {', '.join(cluster.nodes)})")
    leaving = [vm for vm in cluster.vms.values() if vm.node == node]

    def without_node() -> PlacementState:
        state = PlacementState(cluster, limits)
        for vm in leaving:
            state.remove(vm, node)
        state.close(node, "being drained")
        return state

    return best_batch(without_node, policy, leaving, "drain", explain, drained=node)


def plan_rebalance(cluster: Cluster, limits: Limits, max_moves: int, min_gain: float = 0.01,
                   same_user: bool = False, weights: tuple[float, float] = (1.0, 1.0)) -> Plan:
    """hbal-like: repeatedly take the single migration that lowers imbalance most, at most
    `max_moves` times, stopping when the best gain is below `min_gain`.  A VM moves at most
    once; with `same_user`, a VM that shares its node with the same user's VMs stays."""
    if max_moves < 0:
        raise InputError("--max-moves must be >= 0")
    state = PlacementState(cluster, limits)

    def imbalance(spread: tuple[float, float]) -> float:
        return weights[0] * spread[0] + weights[1] * spread[1]

    plan = Plan("rebalance", imbalance_before=imbalance(state.spread()))
    moved: set[str] = set()
    while len(plan.moves) < max_moves:
        current = imbalance(state.spread())
        best: tuple[float, str, str] | None = None
        for vm in cluster.vms.values():
            if vm.node not in state.usable or vm.name in moved:
                continue
            if same_user and vm.user and state.loads[vm.node].users[vm.user] > 1:
                continue
            for target in state.usable:
                if target == vm.node or state.eligibility(vm, target) or state.shortage(target, vm.cpu, vm.memory):
                    continue
                after = state.spread(*state.spread_sums_after([(vm.node, -vm.cpu, -vm.memory),
                                                               (target, vm.cpu, vm.memory)]))
                candidate = (-round(current - imbalance(after), 12), vm.name, target)
                if best is None or candidate < best:
                    best = candidate
        if best is None or -best[0] < min_gain:
            break
        vm = cluster.vms[best[1]]
        state.remove(vm, vm.node)
        state.add(vm, best[2])
        moved.add(vm.name)
        plan.moves.append(Move(vm.name, vm.node, best[2], -best[0]))
    plan.imbalance_after = imbalance(state.spread())
    return plan
