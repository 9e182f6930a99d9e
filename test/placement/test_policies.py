"""The planner's policies and plans, on in-memory clusters."""
from __future__ import annotations

import statistics

import pytest

import placement_helpers  # noqa: F401  (puts placement/ on sys.path)

from ravada_placement.model import VM, Cluster, InputError, Node
from ravada_placement.plan import plan_drain, plan_place, plan_rebalance
from ravada_placement.policies import make_policy
from ravada_placement.state import Limits


def cluster(nodes: list[Node], vms: list[VM]) -> Cluster:
    result = Cluster({n.name: n for n in nodes}, {v.name: v for v in vms})
    result.validate()
    return result


def placed(plan) -> dict[str, str]:
    return {move.vm: move.target for move in plan.moves}


def memory_fractions(c: Cluster, plan) -> list[float]:
    used = {name: 0 for name in c.nodes}
    where = {vm.name: vm.node for vm in c.vms.values() if vm.node} | placed(plan)
    for vm, node in where.items():
        used[node] += c.vms[vm].memory
    return [used[name] / c.nodes[name].memory for name in c.nodes]


# -- ravada --------------------------------------------------------------------------------

def test_ravada_prefers_fewest_running_vms_then_most_free_memory():
    c = cluster([Node("a", 8, 4096), Node("b", 8, 65536), Node("c", 8, 8192)],
                [VM("r1", 1, 512, node="b"), VM("new", 1, 1024)])
    assert placed(plan_place(c, make_policy("ravada"), Limits())) == {"new": "c"}


def test_ravada_ties_are_broken_by_node_name_whatever_the_node_order():
    nodes = [Node("n2", 4, 8192), Node("n1", 4, 8192)]
    first = plan_place(cluster(nodes, [VM("v", 1, 1024)]), make_policy("ravada"), Limits())
    second = plan_place(cluster(nodes[::-1], [VM("v", 1, 1024)]), make_policy("ravada"), Limits())
    assert placed(first) == placed(second) == {"v": "n1"}


def test_ravada_does_not_take_a_node_with_ten_vms_for_an_empty_one():
    # Upstream's early exit /^[01]+\./ matches "10.<free>" and stops scanning at such a node.
    busy = [VM(f"b{i}", 1, 256, node="busy") for i in range(10)]
    c = cluster([Node("busy", 64, 65536), Node("quiet", 64, 16384)], busy + [VM("new", 1, 1024)])
    assert placed(plan_place(c, make_policy("ravada"), Limits())) == {"new": "quiet"}


def test_ravada_ignores_vcpus_but_not_memory():
    c = cluster([Node("small", 1, 65536), Node("full", 64, 1024)], [VM("v", 8, 2048)])
    assert placed(plan_place(c, make_policy("ravada"), Limits())) == {"v": "small"}


def test_ravada_burst_counts_vms_assigned_in_the_same_batch():
    c = cluster([Node("a", 16, 32768), Node("b", 16, 32768)], [VM(f"v{i}", 1, 1024) for i in range(6)])
    targets = list(placed(plan_place(c, make_policy("ravada"), Limits())).values())
    assert targets.count("a") == targets.count("b") == 3


# -- balanced ------------------------------------------------------------------------------

def test_balanced_fills_heterogeneous_nodes_at_the_same_rate():
    c = cluster([Node("big", 32, 65536), Node("small", 8, 16384)], [VM(f"v{i}", 2, 4096) for i in range(10)])
    plan = plan_place(c, make_policy("balanced"), Limits())
    targets = list(placed(plan).values())
    assert targets.count("big") == 8 and targets.count("small") == 2
    assert statistics.pstdev(memory_fractions(c, plan)) == pytest.approx(0.0)


def test_balanced_respects_cpu_capacity_and_overcommit_ratio():
    c = cluster([Node("a", 4, 65536)], [VM("v1", 4, 1024), VM("v2", 4, 1024)])
    strict = plan_place(c, make_policy("balanced"), Limits())
    assert len(strict.moves) == 1 and "cpu" in next(iter(strict.failures.values()))
    overcommitted = plan_place(c, make_policy("balanced"), Limits(cpu_ratio=2.0))
    assert overcommitted.complete and len(overcommitted.moves) == 2


def test_balanced_burst_spreads_a_batch_instead_of_piling_on_one_node():
    c = cluster([Node(f"n{i}", 16, 32768) for i in range(4)], [VM(f"v{i:02}", 2, 2048) for i in range(20)])
    targets = list(placed(plan_place(c, make_policy("balanced"), Limits())).values())
    assert sorted(targets.count(f"n{i}") for i in range(4)) == [5, 5, 5, 5]


def test_balanced_places_where_pacemaker_balanced_leaves_a_vm_stopped():
    # Pacemaker Explained's own example: nodes 2 cpu/2048 and 4/4096, VMs 1/1024, 2/2048,
    # 3/3072 in that CIB order; Pacemaker's greedy order strands the large one.
    c = cluster([Node("node1", 2, 2048), Node("node2", 4, 4096)],
                [VM("rsc-small", 1, 1024), VM("rsc-medium", 2, 2048), VM("rsc-large", 3, 3072)])
    plan = plan_place(c, make_policy("balanced"), Limits())
    assert plan.complete
    assert placed(plan)["rsc-large"] == "node2"


def test_vm_without_its_base_anywhere_is_not_placed_and_the_reason_says_so():
    c = cluster([Node("a", 8, 8192, bases=frozenset({"deb"})), Node("b", 8, 8192)],
                [VM("w", 1, 1024, base="win10"), VM("d", 1, 1024, base="deb")])
    plan = plan_place(c, make_policy("balanced"), Limits())
    assert placed(plan) == {"d": "a"}
    assert "win10" in plan.failures["w"]


def test_vm_larger_than_every_node_is_reported_as_such():
    c = cluster([Node("a", 8, 8192), Node("b", 16, 16384)], [VM("huge", 4, 65536)])
    plan = plan_place(c, make_policy("balanced"), Limits())
    assert not plan.complete and "larger than any node" in plan.failures["huge"]


def test_unavailable_nodes_banned_nodes_and_nodes_without_utilization_are_excluded():
    c = cluster([Node("off", 64, 65536, unavailable="offline"), Node("noinfo", None, None),
                 Node("banned", 64, 65536), Node("ok", 2, 4096)],
                [VM("v", 1, 1024, banned=frozenset({"banned"}))])
    plan = plan_place(c, make_policy("balanced"), Limits(), explain=True)
    assert placed(plan) == {"v": "ok"}
    reasons = {v.node: v.excluded for v in plan.explanations["v"]}
    assert reasons["off"] == "offline" and "banned" in reasons["banned"] and "utilization" in reasons["noinfo"]


def test_plans_are_deterministic():
    vms = [VM(f"v{i}", 1 + i % 3, 1024 * (1 + i % 4), user=f"u{i % 5}") for i in range(40)]
    c = cluster([Node(f"n{i}", 8 + 4 * i, 16384 * (1 + i)) for i in range(5)], vms)
    for name in ("balanced", "pack", "ravada"):
        runs = [plan_place(c, make_policy(name, same_user=True), Limits()).moves for _ in range(3)]
        assert runs[0] == runs[1] == runs[2]


# -- pack ----------------------------------------------------------------------------------

def test_pack_uses_fewest_nodes():
    c = cluster([Node(f"n{i}", 16, 16384) for i in range(4)], [VM(f"v{i}", 2, 4096) for i in range(6)])
    targets = set(placed(plan_place(c, make_policy("pack"), Limits())).values())
    assert len(targets) == 2


def test_pack_fills_a_node_in_use_before_opening_an_empty_one():
    c = cluster([Node("empty", 64, 131072), Node("used", 8, 8192)],
                [VM("r", 1, 1024, node="used"), VM("v", 1, 1024)])
    assert placed(plan_place(c, make_policy("pack"), Limits())) == {"v": "used"}


# -- same-user -----------------------------------------------------------------------------

def test_same_user_joins_the_users_running_vms():
    c = cluster([Node("a", 16, 32768), Node("b", 16, 32768)],
                [VM("r1", 1, 1024, user="ann", node="b"), VM("r2", 8, 16384, node="b"),
                 VM("n1", 1, 1024, user="ann")])
    assert placed(plan_place(c, make_policy("balanced"), Limits())) == {"n1": "a"}
    assert placed(plan_place(c, make_policy("balanced", same_user=True), Limits())) == {"n1": "b"}


def test_same_user_keeps_a_lab_batch_together_on_a_node_where_it_all_fits():
    nodes = [Node("a", 8, 8192), Node("b", 8, 8192), Node("c", 32, 32768)]
    lab = [VM(f"{user}-{i}", 1, 1024, user=user) for user in ("ann", "bob", "cat") for i in range(4)]
    plan = plan_place(cluster(nodes, lab), make_policy("balanced", same_user=True), Limits())
    assert plan.complete
    for user in ("ann", "bob", "cat"):
        assert len({node for vm, node in placed(plan).items() if vm.startswith(user)}) == 1


def test_same_user_falls_back_when_the_users_node_is_full():
    c = cluster([Node("a", 4, 4096), Node("b", 4, 4096)],
                [VM("r1", 1, 3072, user="ann", node="a"), VM("n1", 1, 2048, user="ann")])
    assert placed(plan_place(c, make_policy("balanced", same_user=True), Limits())) == {"n1": "b"}


# -- drain ---------------------------------------------------------------------------------

def test_drain_moves_every_vm_to_a_node_that_fits():
    c = cluster([Node("a", 8, 8192), Node("b", 8, 8192), Node("c", 8, 8192)],
                [VM(f"v{i}", 1, 2048, node="a") for i in range(4)])
    plan = plan_drain(c, make_policy("balanced"), Limits(), "a")
    assert plan.complete and sorted(placed(plan).values()) == ["b", "b", "c", "c"]
    assert all(move.source == "a" for move in plan.moves)


def test_drain_says_which_vm_cannot_move_and_why():
    c = cluster([Node("a", 8, 16384), Node("b", 8, 8192)],
                [VM("big", 1, 12288, node="a"), VM("small", 1, 1024, node="a"),
                 VM("based", 1, 1024, base="w", node="a")])
    plan = plan_drain(c, make_policy("balanced"), Limits(), "a")
    assert placed(plan) == {"small": "b"}
    assert "memory" in plan.failures["big"]
    assert "base 'w'" in plan.failures["based"]


def test_drain_of_an_unknown_node_is_an_input_error():
    with pytest.raises(InputError, match="unknown node"):
        plan_drain(cluster([Node("a", 1, 1)], []), make_policy("balanced"), Limits(), "zz")


# -- rebalance -----------------------------------------------------------------------------

def test_rebalance_takes_the_best_moves_up_to_the_limit():
    c = cluster([Node("a", 16, 16384), Node("b", 16, 16384), Node("c", 16, 16384)],
                [VM(f"v{i}", 2, 2048, node="a") for i in range(6)])
    plan = plan_rebalance(c, Limits(), max_moves=2)
    assert len(plan.moves) == 2 and {m.target for m in plan.moves} == {"b", "c"}
    assert plan.imbalance_after < plan.imbalance_before
    full = plan_rebalance(c, Limits(), max_moves=10)
    assert len(full.moves) == 4 and full.imbalance_after == pytest.approx(0.0)


def test_rebalance_stops_below_the_minimum_gain():
    c = cluster([Node("a", 16, 16384), Node("b", 16, 16384)],
                [VM("x", 1, 1024, node="a"), VM("y", 1, 1024, node="b"), VM("z", 1, 1024, node="a")])
    assert plan_rebalance(c, Limits(), max_moves=5, min_gain=0.01).moves == []


def test_rebalance_never_moves_onto_a_node_without_the_base():
    c = cluster([Node("a", 16, 16384, bases=frozenset({"w"})), Node("b", 16, 16384)],
                [VM(f"v{i}", 2, 2048, base="w", node="a") for i in range(4)])
    assert plan_rebalance(c, Limits(), max_moves=5).moves == []


def test_rebalance_with_same_user_keeps_users_together():
    c = cluster([Node("a", 16, 16384), Node("b", 16, 16384)],
                [VM(f"v{i}", 2, 2048, user="ann", node="a") for i in range(4)])
    assert plan_rebalance(c, Limits(), max_moves=5, same_user=True).moves == []
    assert plan_rebalance(c, Limits(), max_moves=5).moves


def test_negative_sizes_are_refused():
    with pytest.raises(InputError, match="negative"):
        cluster([Node("a", 1, 1)], [VM("v", -1, 1)])
