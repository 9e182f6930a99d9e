"""Plans: place a batch, drain a node, rebalance with a bounded number of migrations.

A batch that fits is placed largest first (each VM consuming capacity before the next).
One that cannot all fit is planned for the most VMs placed: priority classes in turn
(Pacemaker's `priority`, highest first, so a VM is never left out for a lower-priority one),
each smallest first, tried with the policy's node choice, first fit, pack's, and the plain
smallest-memory-first first fit; then a VM left out may still go where moving one planned VM
elsewhere makes room.  Of the plans that place the most, the one the policy rates best wins.
`bound` is how many could be placed at most.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .model import SCORE_INFINITY, VM, Cluster, InputError
from .policies import PackPolicy, Policy, tightest
from .state import Limits, PlacementState


@dataclass(frozen=True)
class Move:
    vm: str
    source: str | None     # None: the VM is not running now
    target: str
    gain: float | None = None   # rebalance: how much this move lowered the objective


@dataclass(frozen=True)
class Verdict:
    """One node as seen for one VM: excluded (and why) or ranked."""
    node: str
    excluded: str | None
    ranking: str = ""
    chosen: bool = False


@dataclass
class Plan:
    kind: str                                   # place | drain | rebalance | clear
    moves: list[Move] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)   # VM -> why it has no node
    explanations: dict[str, list[Verdict]] = field(default_factory=dict)
    drained: str | None = None
    objective_name: str = "imbalance"
    imbalance_before: float | None = None
    imbalance_after: float | None = None
    batch: int = 0                  # VMs asked for
    bound: int | None = None        # at most this many of them can be placed (capacity bound)
    shortfall: tuple[int, int] = (0, 0)     # (vCPUs, MiB) the cluster lacks for the left-out VMs
    smallest_left: tuple[int, int] | None = None    # (vCPUs, MiB) of the smallest VM left out
    notes: list[str] = field(default_factory=list)
    resources: dict[str, tuple[str, ...]] = field(default_factory=dict)   # unit -> its resources

    @property
    def complete(self) -> bool:
        return not self.failures


def _eligible_nodes(state: PlacementState, vm: VM, cache: dict) -> list[str]:
    need = (vm.base, vm.banned, vm.allowed)
    if need not in cache:
        cache[need] = [node for node in state.loads if state.eligibility(vm, node) is None]
    return cache[need]


def assign_batch(state: PlacementState, policy: Policy, vms: list[VM], plan: Plan, explain: bool,
                 key: Callable[[PlacementState, VM, str], tuple] | None = None) -> None:
    """Place every VM of the batch in this order, each one consuming capacity before the next."""
    key = key or policy.key
    cache: dict = {}
    policy.begin_batch(vms)
    for vm in vms:
        blocked = state.blocked(vm) if vm.apart else ()
        best: tuple | None = None
        for node in _eligible_nodes(state, vm, cache):
            if node not in blocked and state.fits(node, vm.cpu, vm.memory, policy.check_cpu):
                candidate = key(state, vm, node) + (node,)
                if best is None or candidate < best:
                    best = candidate
        if explain:
            plan.explanations[vm.name] = _verdicts(state, policy, vm, best[-1] if best else None)
        if best is None:
            plan.failures[vm.name] = ""         # the reason is given on the final state
        else:
            state.add(vm, best[-1])
            policy.on_assign(vm, best[-1])
            plan.moves.append(Move(vm.name, vm.node, best[-1]))


def _refusal(state: PlacementState, policy: Policy, vm: VM, node: str) -> str | None:
    reason = state.eligibility(vm, node)
    if reason is None and node in state.blocked(vm):
        partners = sorted(other for other in vm.apart if state.where.get(other) == node)
        reason = f"-INFINITY colocation with {', '.join(partners)}, which is there"
    return reason or state.shortage(node, vm.cpu, vm.memory, policy.check_cpu)


def _verdicts(state: PlacementState, policy: Policy, vm: VM, chosen: str | None) -> list[Verdict]:
    verdicts = []
    for node in state.loads:
        reason = _refusal(state, policy, vm, node)
        ranking = "" if reason else policy.describe(policy.key(state, vm, node))
        verdicts.append(Verdict(node, reason, ranking, node == chosen))
    return verdicts


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
    reasons = [f"{node}: {_refusal(state, policy, vm, node)}" for node in state.loads]
    if len(reasons) > 4:
        reasons = reasons[:4] + [f"and {len(reasons) - 4} more node(s)"]
    return "no node fits: " + "; ".join(reasons)


# -- a batch ---------------------------------------------------------------------------------

def capacity_bound(state: PlacementState, vms: list[VM], check_cpu: bool) -> int:
    """An upper bound on how many of `vms` any plan places: VMs that fit no eligible node
    even empty are out, and the rest cannot use more than the free capacity summed over the
    usable nodes, per resource (so the smallest ones are counted)."""
    cache: dict = {}
    candidates = []
    for vm in vms:
        for node in _eligible_nodes(state, vm, cache):
            load = state.loads[node]
            if (vm.memory <= load.memory_capacity(state.limits) - load.node.reserved[1]
                    and (not check_cpu or vm.cpu <= load.cpu_capacity(state.limits) - load.node.reserved[0])):
                candidates.append(vm)
                break
    free_cpu, free_memory = _free(state)
    bound = _count_within(sorted(vm.memory for vm in candidates), free_memory)
    if check_cpu:
        bound = min(bound, _count_within(sorted(vm.cpu for vm in candidates), free_cpu))
    return bound


def _free(state: PlacementState) -> tuple[float, float]:
    cpu = memory = 0.0
    for node in state.usable:
        load = state.loads[node]
        cpu += max(load.cpu_capacity(state.limits) - load.cpu, 0)
        memory += max(load.memory_capacity(state.limits) - load.memory, 0)
    return cpu, memory


def _count_within(sizes: list[int], capacity: float) -> int:
    total = count = 0
    for size in sizes:
        total += size
        if total > capacity:
            break
        count += 1
    return count


def smallest_first(vms: list[VM], state: PlacementState, check_cpu: bool) -> list[VM]:
    """By dominant share of the free capacity, smallest first (ties: name)."""
    free_cpu, free_memory = _free(state)
    free_cpu, free_memory = free_cpu or 1.0, free_memory or 1.0
    return sorted(vms, key=lambda vm: (max(vm.cpu / free_cpu if check_cpu else 0.0, vm.memory / free_memory),
                                       vm.name))


def make_room(state: PlacementState, policy: Policy, plan: Plan, left: list[VM], movable: dict[str, VM]) -> None:
    """Place VMs left out where moving one planned VM (of `movable`) to another node frees
    enough: remaining free space is often split across nodes in pieces too small for any VM
    left out.  A VM shape that found no room is not tried again (bounded work)."""
    cache: dict = {}
    index = {move.vm: i for i, move in enumerate(plan.moves)}
    hosted: dict[str, list[VM]] = {}
    for name, vm in movable.items():
        hosted.setdefault(state.where[name], []).append(vm)
    failed: set[tuple] = set()
    for vm in smallest_first(left, state, policy.check_cpu):
        shape = (vm.cpu, vm.memory, vm.base, vm.banned, vm.allowed, vm.apart)
        if shape in failed:
            continue
        targets: dict[tuple, list[str]] = {}      # a movable shape -> nodes it fits now
        blocked = state.blocked(vm) if vm.apart else ()
        done = False
        for node in _eligible_nodes(state, vm, cache):
            if node in blocked:
                continue
            load = state.loads[node]
            need_cpu = vm.cpu - (load.cpu_capacity(state.limits) - load.cpu) if policy.check_cpu else 0
            need_memory = vm.memory - (load.memory_capacity(state.limits) - load.memory)
            for other in sorted(hosted.get(node, ()), key=lambda o: (o.memory, o.cpu, o.name)):
                if other.memory < need_memory or other.cpu < need_cpu or other.apart or vm.name in other.apart:
                    continue
                other_shape = (other.cpu, other.memory, other.base, other.banned, other.allowed)
                if other_shape not in targets:
                    fits = [n for n in _eligible_nodes(state, other, cache)
                            if state.fits(n, other.cpu, other.memory, policy.check_cpu)]
                    targets[other_shape] = sorted(fits, key=lambda n: tightest(state, other, n) + (n,))
                destination = next((n for n in targets[other_shape] if n != node), None)
                if destination is None:
                    continue
                state.remove(other, node)
                state.add(other, destination)
                state.add(vm, node)
                hosted[node].remove(other)
                hosted.setdefault(destination, []).append(other)
                plan.moves[index[other.name]] = Move(other.name, other.node, destination)
                plan.moves.append(Move(vm.name, vm.node, node))
                index[vm.name] = len(plan.moves) - 1
                del plan.failures[vm.name]
                plan.notes.append(f"{vm.name}: room made on {node} by planning {other.name} on {destination}")
                if vm.name in plan.explanations:
                    plan.explanations[vm.name] = [
                        Verdict(v.node, None if v.node == node else v.excluded,
                                f"room made by planning {other.name} on {destination}" if v.node == node
                                else v.ranking, v.node == node) for v in plan.explanations[vm.name]]
                done = True
                break
            if done:
                break
        if not done:
            failed.add(shape)


def _most_placed(make_state: Callable[[], PlacementState], policy: Policy, vms: list[VM], kind: str,
                 explain: bool, drained: str | None) -> tuple[Plan, PlacementState]:
    """The plan placing the most VMs of a batch that cannot all fit (see the module doc)."""
    classes: dict[int, list[VM]] = {}
    for vm in vms:
        classes.setdefault(vm.priority, []).append(vm)
    # First fit (nodes in CIB order) and pack's best fit on nodes in use leave fewer unusable
    # fragments than spreading; which one places most depends on the shapes.  The last run
    # is the plain baseline (smallest memory first, first fit), so no plan places fewer.
    node_order = {node: i for i, node in enumerate(make_state().loads)}

    def first_fit(state: PlacementState, vm: VM, node: str) -> tuple:
        return (node_order[node],)

    def by_share(batch: list[VM], state: PlacementState) -> list[VM]:
        return policy.arrange(smallest_first(batch, state, policy.check_cpu))

    def by_memory(batch: list[VM], state: PlacementState) -> list[VM]:
        return policy.arrange(sorted(batch, key=lambda vm: (vm.memory, vm.cpu, vm.name)))

    if policy.maximize:
        runs = [(by_share, policy.key), (by_share, first_fit), (by_memory, first_fit)]
        if policy.name.split("+")[0] != PackPolicy.name:
            runs.insert(2, (by_share, PackPolicy().key))
    else:
        runs = [(lambda batch, state: batch, policy.key)]
    best: tuple | None = None
    for rank, (arrange, chooser) in enumerate(runs):
        state, plan = make_state(), Plan(kind, drained=drained)
        for priority in sorted(classes, reverse=True):
            batch = classes[priority]
            assign_batch(state, policy, arrange(batch, state), plan, explain, chooser)
            left = [vm for vm in batch if vm.name in plan.failures]
            if left and policy.maximize:
                planned = {move.vm for move in plan.moves}
                movable = {vm.name: vm for vm in batch if vm.name in planned and not vm.apart}
                make_room(state, policy, plan, left, movable)
        score = (-len(plan.moves), round(policy.objective(state), 9), rank)
        if best is None or score < best[0]:
            best = (score, plan, state)
    _, plan, state = best
    return _better_spread(make_state, policy, vms, plan, state, explain) if policy.maximize else (plan, state)


def _better_spread(make_state: Callable[[], PlacementState], policy: Policy, vms: list[VM], plan: Plan,
                   state: PlacementState, explain: bool) -> tuple[Plan, PlacementState]:
    """The same VMs placed again, largest first with the policy's own node choice: when they
    all fit that way, the plan places as many and usually rates better (the count-first
    passes chose nodes for packing, not for spread)."""
    chosen = {move.vm for move in plan.moves}
    subset = [vm for vm in vms if vm.name in chosen]
    other_state = make_state()
    other = Plan(plan.kind, drained=plan.drained)
    assign_batch(other_state, policy, policy.orders(subset, other_state)[0], other, explain)
    if not other.complete or policy.objective(other_state) >= policy.objective(state):
        return plan, state
    for vm in vms:
        if vm.name not in chosen:
            other.failures[vm.name] = plan.failures[vm.name]
            if explain:
                other.explanations[vm.name] = _verdicts(other_state, policy, vm, None)
    return other, other_state


def place_batch(make_state: Callable[[], PlacementState], policy: Policy, vms: list[VM], kind: str,
                explain: bool, drained: str | None = None) -> Plan:
    """Try the policy's batch orders while the batch may fit entirely; keep the first plan
    that places every VM.  Otherwise (or if none did) the plan that places the most."""
    initial = make_state()
    bound = capacity_bound(initial, vms, policy.check_cpu)
    plan, final = Plan(kind, drained=drained), initial
    tried: list[tuple[Plan, PlacementState]] = []
    if bound >= len(vms):
        for order in policy.orders(vms, initial):
            state = make_state()
            candidate = Plan(kind, drained=drained)
            assign_batch(state, policy, order, candidate, explain)
            tried.append((candidate, state))
            if candidate.complete:
                break
    if vms and not (tried and tried[-1][0].complete):
        if len({vm.priority for vm in vms}) > 1:
            tried = []      # those orders ignore priority: only a complete one could stand
        tried.append(_most_placed(make_state, policy, vms, kind, explain, drained))
    if tried:
        # A complete plan ends the list; otherwise the first of those placing most.
        plan, final = max(tried, key=lambda pair: len(pair[0].moves))
    for vm in vms:
        if plan.failures.get(vm.name) == "":
            plan.failures[vm.name] = _why_unplaceable(final, vm, policy)
    plan.batch, plan.bound = len(vms), bound
    plan.objective_name = policy.objective_name
    plan.resources = {vm.name: vm.resources for vm in vms if vm.resources != (vm.name,)}
    if plan.failures:
        left = [vm for vm in vms if vm.name in plan.failures]
        free_cpu, free_memory = _free(final)
        plan.shortfall = (max(0, int(sum(vm.cpu for vm in left) - free_cpu)) if policy.check_cpu else 0,
                          max(0, int(sum(vm.memory for vm in left) - free_memory)))
        smallest = min(left, key=lambda vm: (vm.memory, vm.cpu, vm.name))
        plan.smallest_left = (smallest.cpu, smallest.memory)
    return plan


def plan_place(cluster: Cluster, policy: Policy, limits: Limits, names: list[str] | None = None,
               explain: bool = False) -> Plan:
    """Place new or stopped VMs (all of them, or the ones named: a VM, a group or a member)."""
    if names:
        units = {name: cluster.unit_of(name) for name in names}
        unknown = [name for name, unit in units.items() if unit is None]
        if unknown:
            raise InputError(f"unknown VM(s): {', '.join(unknown)}")
        running = [f"{name} (on {cluster.vms[unit].node})" for name, unit in units.items() if cluster.vms[unit].node]
        if running:
            raise InputError(f"already running, use drain or rebalance to move: {', '.join(running)}")
        batch = [cluster.vms[unit] for unit in dict.fromkeys(units.values())]
    else:
        batch = [vm for vm in cluster.vms.values() if vm.node is None]
    return place_batch(lambda: PlacementState(cluster, limits), policy, batch, "place", explain)


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

    return place_batch(without_node, policy, leaving, "drain", explain, drained=node)


def plan_rebalance(cluster: Cluster, limits: Limits, max_moves: int, min_gain: float = 0.01,
                   same_user: bool = False, weights: tuple[float, float] = (1.0, 1.0),
                   policy: Policy | None = None, score: int = 1000) -> Plan:
    """hbal-like: repeatedly take the single migration that lowers the policy's objective
    most (balanced: imbalance; pack: load concentrated on fewer nodes; ravada: VM-count
    spread), at most `max_moves` times, stopping when the best gain is below `min_gain`.
    A VM moves at most once; with `same_user`, a VM that shares its node with the same
    user's VMs stays; a VM whose resource-stickiness is not below the constraint `score`
    stays (Pacemaker would not move it)."""
    from .policies import make_policy

    if max_moves < 0:
        raise InputError("--max-moves must be >= 0")
    policy = policy or make_policy("balanced", False, weights)
    state = PlacementState(cluster, limits)
    plan = Plan("rebalance", objective_name=policy.objective_name, imbalance_before=policy.objective(state))
    moved: set[str] = set()
    # A location score moves a running VM only if it beats the VM's stickiness.
    sticky = sorted(vm.name for vm in cluster.vms.values() if vm.node in state.usable_set
                    and vm.stickiness >= min(score, SCORE_INFINITY - 1) and vm.stickiness > 0)
    if sticky:
        plan.notes.append(f"not moved (resource-stickiness >= score {score}): {', '.join(sticky)}")
    cache: dict = {}
    while len(plan.moves) < max_moves:
        current = policy.objective(state)
        best: tuple[float, str, str] | None = None
        for vm in cluster.vms.values():
            if vm.node not in state.usable_set or vm.name in moved or vm.name in sticky:
                continue
            source = state.where[vm.name]
            if same_user and vm.user and state.loads[source].users[vm.user] > 1:
                continue
            blocked = state.blocked(vm) if vm.apart else ()
            for target in _eligible_nodes(state, vm, cache):
                if target == source or target in blocked or not state.fits(target, vm.cpu, vm.memory,
                                                                          policy.check_cpu):
                    continue
                after = policy.objective(state, [(source, -vm.cpu, -vm.memory, -1),
                                                 (target, vm.cpu, vm.memory, 1)])
                candidate = (-round(current - after, 12), vm.name, target)
                if best is None or candidate < best:
                    best = candidate
        if best is None or -best[0] < min_gain:
            break
        vm = cluster.vms[best[1]]
        state.remove(vm, vm.node)
        state.add(vm, best[2])
        moved.add(vm.name)
        plan.moves.append(Move(vm.name, vm.node, best[2], -best[0]))
    plan.imbalance_after = policy.objective(state)
    plan.resources = {vm.name: vm.resources for vm in cluster.vms.values() if vm.resources != (vm.name,)}
    emptied = [node for node in state.usable if state.loads[node].vms == 0
               and any(vm.node == node for vm in cluster.vms.values())]
    if emptied:
        plan.notes.append(f"no VM left on {', '.join(emptied)} after these moves (ravada-node shutdown can "
                          "power them off)")
    return plan
