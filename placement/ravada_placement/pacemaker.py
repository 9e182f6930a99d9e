"""Pacemaker's command-line tools for ravada-place: through ocf_ravada.pacemaker, the one
module that runs them (bounded calls, one typed error), plus what only placement reads from
their output (crm_mon's resource locations, crm_simulate's transition graph)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from lxml import etree
from ocf_ravada import pacemaker as tools
from ocf_ravada.deadline import Deadline

from .inputs import parse_xml
from .model import InputError

# Each call may take this long (a busy CIB manager, crm_simulate on thousands of resources).
TIMEOUT = 120

PacemakerError = tools.PacemakerError


def _deadline() -> Deadline:
    return Deadline(TIMEOUT)


def tool_xml(data: bytes, what: str) -> etree._Element:
    """A tool's XML output, parsed like any input we did not write."""
    try:
        return parse_xml(data, what)
    except InputError as err:
        raise tools.BadOutput(str(err)) from None


def run(argv: list[str], env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
    return tools.run(argv, _deadline(), env=env, ok_codes=ok_codes, limit=TIMEOUT)


def query_live_cib() -> bytes:
    return run(["cibadmin", "--query"]).encode()


def write_cib(root: etree._Element, path: Path) -> None:
    path.write_bytes(etree.tostring(root, xml_declaration=False, encoding="UTF-8"))


def status_of(cib: etree._Element) -> etree._Element:
    """crm_mon's view (nodes online, where resources run) of exactly this CIB snapshot."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        path = Path(tmp) / "cib.xml"
        write_cib(cib, path)
        return tools.cluster_status(_deadline(), cib_file=str(path), limit=TIMEOUT)


def verify(cib: etree._Element) -> tuple[bool, str]:
    """crm_verify on a CIB: (valid, messages)."""
    return tools.verify_cib(cib, _deadline(), limit=TIMEOUT)


def simulate(cib: etree._Element, nodes_up: list[str]) -> dict[str, str | None]:
    """Run Pacemaker's scheduler on this CIB (crm_simulate --run) and return where each
    top-level resource ends up: where it runs now, changed by the transition's stops, starts
    and migrations.  `nodes_up` are brought online first (a CIB without status section).
    The transition graph is read rather than executed (--simulate is ~50x slower)."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        source, graph_path = Path(tmp) / "in.xml", Path(tmp) / "graph.xml"
        write_cib(cib, source)
        argv = ["crm_simulate", "--xml-file", str(source), "--run", "--save-graph", str(graph_path)]
        for node in nodes_up:
            argv += ["--node-up", node]
        run(argv)
        graph = tool_xml(graph_path.read_bytes(), "crm_simulate's transition graph")
    current = ({rsc: min(nodes) for rsc, nodes in active_nodes(status_of(cib)).items()}
               if cib.find("status/node_state") is not None else {})
    return placements_after(graph, current)


def placements_after(graph: etree._Element, current: dict[str, str | None]) -> dict[str, str | None]:
    where = dict(current)
    stopped, started = set(), {}
    for op in graph.iter("rsc_op"):
        primitive = op.find("primitive")
        if primitive is None:
            continue
        rsc = primitive.get("id")
        if op.get("operation") in ("start", "migrate_from"):
            started[rsc] = op.get("on_node")
        elif op.get("operation") == "stop":
            stopped.add(rsc)
    for rsc in stopped:
        where[rsc] = None
    where.update(started)
    return where


ACTIVE_ROLES = ("Started", "Promoted", "Unpromoted", "Master", "Slave")


def active_nodes(status: etree._Element) -> dict[str, set[str]]:
    """Resource id -> nodes where it is active, from crm_mon's XML: primitives (clone
    instances "p:1" under "p"), and every group, clone and bundle under its own id too."""
    where: dict[str, set[str]] = {}
    top = status.find("resources")
    if top is None:
        return where

    def walk(element: etree._Element, owners: list[str]) -> None:
        for child in element:
            if child.tag == "resource":
                nodes = {n.get("name") for n in child.iterfind("node") if n.get("name")}
                if child.get("active") == "true" and child.get("role") in ACTIVE_ROLES and nodes:
                    for rid in [child.get("id", "").split(":", 1)[0], *owners]:
                        where.setdefault(rid, set()).update(nodes)
            elif child.tag in ("group", "clone", "bundle", "replica"):
                walk(child, owners + ([child.get("id")] if child.tag != "replica" else []))

    walk(top, [])
    return where


def apply(old: etree._Element, new: etree._Element) -> None:
    """One atomic CIB change: the patch `old` -> `new` (crm_diff + cibadmin --patch, like
    `pcs cluster cib-push --config`).  It holds only our deletions and additions, so changes
    others made since `old` was read are kept; if they touched the same elements the whole
    patch is rejected.  Unversioned: status updates bump the CIB version every few seconds;
    the caller compares admin_epoch/epoch instead."""
    tools.apply_change(old, new, _deadline(), limit=TIMEOUT)
