"""Plans: place a batch, drain a node, rebalance with a bounded number of migrations."""
from __future__ import annotations

from dataclasses import dataclass, field

from .model import VM, Cluster, InputError
from .policies import Policy
from .state import Limits, PlacementState


@dataclass(frozen=True)
class Move:
    vm: str
    source: str | None     # None: the VM is not running now
    target: str


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
    """Place every VM of the batch in turn, each one consuming capacity before the next."""
    nodes = list(state.loads)
    for vm in policy.order(vms, state):
        best: tuple | None = None
        verdicts: list[Verdict] = []
        refusals: list[str] = []
        for node in nodes:
            reason = state.eligibility(vm, node) or state.shortage(node, vm.cpu, vm.memory, policy.check_cpu)
            if reason:
                refusals.append(f"{node}: {reason}")
                if explain:
                    verdicts.append(Verdict(node, reason))
                continue
            key = policy.key(state, vm, node) + (node,)
            if best is None or key < best:
                best = key
            if explain:
                verdicts.append(Verdict(node, None, policy.describe(key[:-1])))
        if best is None:
            plan.failures[vm.name] = _why_unplaceable(state, vm, refusals)
        else:
            target = best[-1]
            state.add(vm, target)
            policy.on_assign(vm, target)
            plan.moves.append(Move(vm.name, vm.node, target))
        if explain:
            chosen = best[-1] if best else None
            plan.explanations[vm.name] = [Verdict(v.node, v.excluded, v.ranking, v.node == chosen) for v in verdicts]


def _why_unplaceable(state: PlacementState, vm: VM, refusals: list[str]) -> str:
    sized = [load.node for load in state.loads.values() if load.node.cpu is not None and load.node.memory is not None]
    if not sized:
        return "no node publishes utilization cpu/hv_memory"
    cpu_fits = any(vm.cpu <= n.cpu * state.limits.cpu_ratio for n in sized)
    memory_fits = any(vm.memory <= n.memory * state.limits.memory_ratio for n in sized)
    if not memory_fits or not cpu_fits:
        biggest = max(sized, key=lambda n: (n.memory, n.cpu))
        return (f"larger than any node ({vm.cpu} vCPU / {vm.memory} MiB; biggest node {biggest.name}: "
                f"{biggest.cpu} CPU / {biggest.memory} MiB)")
    return "no node fits: " + "; ".join(refusals)


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
    plan = Plan("place")
    assign_batch(PlacementState(cluster, limits), policy, batch, plan, explain)
    return plan


def plan_drain(cluster: Cluster, policy: Policy, limits: Limits, node: str, explain: bool = False) -> Plan:
    """Give every VM running on `node` a target elsewhere that fits."""
    if node not in cluster.nodes:
        raise InputError(f"unknown node {node!r} (known: {', '.join(cluster.nodes)})")
    state = PlacementState(cluster, limits)
    leaving = [vm for vm in cluster.vms.values() if vm.node == node]
    for vm in leaving:
        state.remove(vm, node)
    state.close(node, "being drained")
    plan = Plan("drain", drained=node)
    assign_batch(state, policy, leaving, plan, explain)
    return plan


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
        plan.moves.append(Move(vm.name, vm.node, best[2]))
    plan.imbalance_after = imbalance(state.spread())
    return plan
