"""Turn a plan into `rsc_location` constraints and put them into a copy of the CIB.

Every constraint this tool writes has an id starting with `ravada-place-`; before writing the
constraints of a VM, only those of ours that name the same VM are removed (a drain's bans
stay until `clear`).  Constraints of anybody else are never touched.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass

from lxml import etree

from .cib import CONSTRAINT_PREFIX
from .model import InputError
from .plan import Plan

INFINITY = "INFINITY"
MAX_SCORE = 1_000_000


@dataclass(frozen=True)
class Location:
    id: str
    rsc: str
    node: str
    score: str


def parse_score(text: str) -> str:
    """A positive location score, or INFINITY for a mandatory placement."""
    if text.strip().upper() in ("INFINITY", "+INFINITY", "INF"):
        return INFINITY
    try:
        score = int(text)
    except ValueError:
        raise InputError(f"--score must be a positive integer or INFINITY, not {text!r}") from None
    if not 0 < score < MAX_SCORE:
        raise InputError(f"--score must be between 1 and {MAX_SCORE - 1} (or INFINITY), not {score}")
    return str(score)


def _id_part(text: str) -> str:
    """`text` as part of an XML id (NCName characters); when characters had to be replaced,
    a short hash of the original keeps two names apart (`vmé`, `vmè`)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if safe == text:
        return text
    return f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def locations(plan: Plan, score: str) -> list[Location]:
    """One location per resource of each moved unit (a group is constrained as a whole,
    colocated VMs each), plus a drain's bans."""
    result = []
    for move in plan.moves:
        for rsc in plan.resources.get(move.vm, (move.vm,)):
            result.append(Location(f"{CONSTRAINT_PREFIX}{_id_part(rsc)}", rsc, move.target, score))
            if plan.drained and move.source == plan.drained:
                result.append(Location(f"{CONSTRAINT_PREFIX}{_id_part(rsc)}-avoid-{_id_part(plan.drained)}",
                                       rsc, plan.drained, "-" + INFINITY))
    seen: dict[str, str] = {}
    for location in result:
        if seen.setdefault(location.id, location.rsc) != location.rsc:
            raise InputError(f"resources {seen[location.id]!r} and {location.rsc!r} would share the "
                             f"constraint id {location.id}; rename one of them")
    return result


def is_ban(location: etree._Element) -> bool:
    return location.get("score", "").strip().lower() in ("-infinity", "-inf")


def replaced(cib: etree._Element, new: list[Location], vms: set[str] | None,
             keep_bans: bool = True) -> list[etree._Element]:
    """Our constraints that writing `new` replaces: those of `vms` (all VMs when None).

    A drain's bans are kept (the node stays avoided until `clear`) unless `new` rewrites
    the very same id or keep_bans is False."""
    new_ids = {location.id for location in new}
    return [loc for loc in cib.iterfind("configuration/constraints/rsc_location")
            if loc.get("id", "").startswith(CONSTRAINT_PREFIX) and (vms is None or loc.get("rsc") in vms)
            and (not keep_bans or not is_ban(loc) or loc.get("id") in new_ids)]


def location_element(location: Location) -> etree._Element:
    return etree.Element("rsc_location", id=location.id, rsc=location.rsc, node=location.node,
                         score=location.score)


def with_locations(cib: etree._Element, new: list[Location], vms: set[str] | None,
                   keep_bans: bool = True) -> etree._Element:
    """A copy of the CIB where our constraints for `vms` are replaced by `new`."""
    result = copy.deepcopy(cib)
    for old in replaced(result, new, vms, keep_bans):
        old.getparent().remove(old)
    constraints = result.find("configuration/constraints")
    if constraints is None:
        constraints = etree.SubElement(result.find("configuration"), "constraints")
    taken = {el.get("id") for el in result.iter() if el.get("id")}
    for location in new:
        if location.id in taken:
            raise InputError(f"id {location.id} is already used in the CIB by something that is not ours")
        constraints.append(location_element(location))
    return result


def constraints_fragment(new: list[Location]) -> etree._Element:
    fragment = etree.Element("constraints")
    for location in new:
        fragment.append(location_element(location))
    return fragment
