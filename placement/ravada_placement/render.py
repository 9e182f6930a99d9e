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
        gain = f"  (imbalance -{move.gain:.4f})" if move.gain is not None else ""
        lines.append(f"{move.vm}: {source}{move.target}{gain}")
    for vm, reason in plan.failures.items():
        lines.append(f"{vm}: CANNOT {'MOVE' if plan.kind != 'place' else 'PLACE'}: {reason}")
    if plan.imbalance_before is not None:
        lines.append(f"imbalance {plan.imbalance_before:.4f} -> {plan.imbalance_after:.4f} "
                     f"with {len(plan.moves)} move(s)")
    if not plan.moves and not plan.failures:
        lines.append("nothing to do")
    return "\n".join(lines)


def removals(removed: list[str]) -> str:
    return "\n".join(f"remove {cid}" for cid in removed) or "nothing to do"


def explain(plan: Plan) -> str:
    lines = []
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
        "imbalance_before": plan.imbalance_before,
        "imbalance_after": plan.imbalance_after,
        "constraints": [vars(loc) for loc in new],
    }, indent=2)
