"""Human and machine renderings of a plan."""
from __future__ import annotations

import json
import shlex

from lxml import etree

from .constraints import Location, constraints_fragment
from .plan import Plan


def text(plan: Plan) -> str:
    lines = []
    for move in plan.moves:
        source = f"{move.source} -> " if move.source else ""
        gain = f"  ({plan.objective_name} -{move.gain:.4f})" if move.gain is not None else ""
        lines.append(f"{move.vm}: {source}{move.target}{gain}")
    for vm, reason in plan.failures.items():
        lines.append(f"{vm}: CANNOT {'MOVE' if plan.kind != 'place' else 'PLACE'}: {reason}")
    if plan.failures and plan.batch:
        lines.append(left_out(plan))
    lines += plan.notes
    if plan.imbalance_before is not None:
        lines.append(f"{plan.objective_name} {plan.imbalance_before:.4f} -> {plan.imbalance_after:.4f} "
                     f"with {len(plan.moves)} move(s)")
    if not plan.moves and not plan.failures:
        lines.append("nothing to do")
    return "\n".join(lines)


def left_out(plan: Plan) -> str:
    """How many VMs have no node, and the smallest capacity change that would fit them."""
    cpu, memory = plan.shortfall
    needs = [f"{cpu} more vCPUs" if cpu else "", f"{memory} more MiB of memory" if memory else ""]
    needs = [need for need in needs if need]
    if needs:
        change = f"to fit them the cluster needs {' and '.join(needs)}"
    else:
        cpu, memory = plan.smallest_left or (0, 0)
        change = ("the free capacity would suffice in total but is split across nodes or on nodes they may "
                  f"not use: the smallest needs one node with {cpu} vCPUs and {memory} MiB free")
    return f"left out: {len(plan.failures)} of {plan.batch} VM(s); {change}"


def bound(plan: Plan) -> str:
    placed = plan.batch - len(plan.failures)
    share = f" ({placed / plan.bound:.0%} of the bound)" if plan.bound else ""
    return (f"bound: at most {plan.bound} of {plan.batch} VM(s) can be placed (free capacity summed per "
            f"resource); this plan places {placed}{share}")


def removals(removed: list[str]) -> str:
    return "\n".join(f"remove {cid}" for cid in removed) or "nothing to do"


def explain(plan: Plan) -> str:
    lines = [bound(plan)] if plan.bound is not None and plan.batch else []
    for vm, verdicts in plan.explanations.items():
        lines.append(f"{vm}:")
        for verdict in verdicts:
            if verdict.excluded:
                lines.append(f"  {verdict.node:<20} excluded: {verdict.excluded}")
            else:
                mark = "*" if verdict.chosen else " "
                lines.append(f"{mark} {verdict.node:<20} {verdict.ranking}")
    return "\n".join(lines)


def xml(new: list[Location]) -> str:
    return etree.tostring(constraints_fragment(new), pretty_print=True, encoding="unicode").rstrip()


def pcs(new: list[Location], removed: list[str]) -> str:
    lines = [f"pcs constraint delete {shlex.quote(cid)}" for cid in removed]
    lines += [f"pcs constraint location add -- {shlex.quote(loc.id)} {shlex.quote(loc.rsc)} "
              f"{shlex.quote(loc.node)} {loc.score}" for loc in new]
    return "\n".join(lines)


def crm(new: list[Location], removed: list[str]) -> str:
    lines = [f"crm configure delete {shlex.quote(cid)}" for cid in removed]
    lines += [f"crm configure location {shlex.quote(loc.id)} {shlex.quote(loc.rsc)} "
              f"{shlex.quote(loc.score + ':')} {shlex.quote(loc.node)}" for loc in new]
    return "\n".join(lines)


def as_json(plan: Plan, new: list[Location]) -> str:
    return json.dumps({
        "kind": plan.kind,
        "complete": plan.complete,
        "moves": [{"vm": m.vm, "from": m.source, "to": m.target} | ({"gain": m.gain} if m.gain is not None else {})
                  for m in plan.moves],
        "failures": plan.failures,
        "left_out": len(plan.failures),
        "bound": plan.bound,
        "shortfall": {"cpu": plan.shortfall[0], "hv_memory": plan.shortfall[1]},
        "objective": plan.objective_name,
        "imbalance_before": plan.imbalance_before,
        "imbalance_after": plan.imbalance_after,
        "constraints": [vars(loc) for loc in new],
    }, indent=2)
