"""Pacemaker's command-line tools, run as subprocesses (the CIB is their interface)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from lxml import etree

from .inputs import parse_xml
from .model import InputError

TIMEOUT = 120


class PacemakerError(Exception):
    """A Pacemaker tool failed or refused a change."""


def tool_xml(data: bytes, what: str) -> etree._Element:
    """A tool's XML output, parsed like any input we did not write."""
    try:
        return parse_xml(data, what)
    except InputError as err:
        raise PacemakerError(str(err)) from None


def run(argv: list[str], env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              env=dict(os.environ, **env) if env else None)
    except FileNotFoundError:
        raise PacemakerError(f"{argv[0]} not found (is pacemaker-cli-utils installed?)") from None
    except subprocess.TimeoutExpired:
        raise PacemakerError(f"{argv[0]} did not answer within {TIMEOUT}s") from None
    if proc.returncode not in ok_codes:
        detail = (proc.stderr or proc.stdout).strip()
        raise PacemakerError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def query_live_cib() -> bytes:
    return run(["cibadmin", "--query"]).encode()


def write_cib(root: etree._Element, path: Path) -> None:
    path.write_bytes(etree.tostring(root, xml_declaration=False, encoding="UTF-8"))


def status_of(cib: etree._Element) -> etree._Element:
    """crm_mon's view (nodes online, where resources run) of exactly this CIB snapshot."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        path = Path(tmp) / "cib.xml"
        write_cib(cib, path)
        out = run(["crm_mon", "--output-as=xml", "--one-shot", "--inactive"], env={"CIB_file": str(path)})
    return tool_xml(out.encode(), "crm_mon's output")


def verify(cib: etree._Element) -> tuple[bool, str]:
    """crm_verify on a CIB: (valid, messages)."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        path = Path(tmp) / "cib.xml"
        write_cib(cib, path)
        proc = subprocess.run(["crm_verify", "--verbose", "--xml-file", str(path)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


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
    current = resource_locations(status_of(cib)) if cib.find("status/node_state") is not None else {}
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


def resource_locations(status: etree._Element) -> dict[str, str | None]:
    where: dict[str, str | None] = {}
    for rsc in status.iterfind("resources/resource"):
        node = rsc.find("node")
        active = rsc.get("active") == "true" and rsc.get("role") in ("Started", "Promoted", "Unpromoted")
        where[rsc.get("id")] = node.get("name") if active and node is not None else None
    return where


def apply(old: etree._Element, new: etree._Element) -> None:
    """One atomic CIB change: the patch `old` -> `new` (crm_diff, like `pcs cluster cib-push
    --config`).  It holds only our deletions and additions, so changes others made since `old`
    was read are kept, not overwritten; if they touched the same elements the whole patch is
    rejected.  Unversioned on purpose: status updates bump the CIB version every few seconds,
    so a versioned patch would almost always be refused as stale."""
    with tempfile.TemporaryDirectory(prefix="ravada-place-") as tmp:
        old_path, new_path, patch_path = Path(tmp) / "old.xml", Path(tmp) / "new.xml", Path(tmp) / "patch.xml"
        write_cib(old, old_path)
        write_cib(new, new_path)
        # crm_diff exits 1 when the files differ, which is the case we want.
        patch = run(["crm_diff", "--no-version", "--original", str(old_path), "--new", str(new_path)],
                    ok_codes=(0, 1))
        if not patch.strip():
            return
        # The digest pins the whole result, status included: cibadmin would then refuse the
        # patch whenever anything else changed (and always on a CIB_file); our deletions and
        # additions are what must apply, and the caller checked the configuration version.
        diff = tool_xml(patch.encode(), "crm_diff's patch")
        diff.attrib.pop("digest", None)
        patch_path.write_bytes(etree.tostring(diff))
        run(["cibadmin", "--patch", "--xml-file", str(patch_path)])
