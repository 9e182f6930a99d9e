"""Which cluster node a Ceph client address belongs to.

Each node publishes the IP(s) its Ceph clients use, as seen by Ceph, in the permanent node
attribute `ravada-ceph-addrs` (space separated), e.g.
    crm_attribute -t nodes -N node1 -n ravada-ceph-addrs -v "10.0.0.11"
Agents read them from the CIB; tools and fence_rbd also accept an explicit map
"node1:10.0.0.11,10.0.1.11;node2:10.0.0.12".
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from .addresses import ClientAddr
from .cluster import CephSession
from .errors import BadDiskSpec, RbdError

ATTRIBUTE = "ravada-ceph-addrs"


@dataclass
class NodeMap:
    ips_by_node: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def node_of(self, addr: ClientAddr | str) -> str | None:
        ip = addr.ip if isinstance(addr, ClientAddr) else str(ipaddress.ip_address(addr))
        for node, ips in self.ips_by_node.items():
            if ip in ips:
                return node
        return None

    def ips_of(self, node: str) -> tuple[str, ...]:
        return self.ips_by_node.get(node, ())

    def describe(self, addr: ClientAddr, own_ips: frozenset[str] = frozenset()) -> str:
        """'10.0.0.5:0/123 (node2)' or '(this node)' or '(unknown node)' for messages."""
        if addr.ip in own_ips:
            where = "this node"
        else:
            where = self.node_of(addr) or "unknown node"
        return f"{addr} ({where})"

    @classmethod
    def parse(cls, text: str) -> "NodeMap":
        """'node1:ip[,ip...];node2:ip' (also '=' instead of ':' and spaces as separators)."""
        result: dict[str, tuple[str, ...]] = {}
        for item in text.replace("\n", ";").split(";"):
            item = item.strip()
            if not item:
                continue
            sep = "=" if "=" in item else ":"
            node, _, ips = item.partition(sep)
            if not node.strip() or not ips.strip():
                raise BadDiskSpec(f"node address map entry {item!r} is not NODE:IP[,IP]")
            result[node.strip()] = _parse_ips(ips.replace(",", " "), item)
        return cls(result)

    @classmethod
    def from_cib_xml(cls, xml: bytes | str) -> "NodeMap":
        """Node attributes from a CIB (or its <nodes>/<status> section): permanent ones from
        <nodes>, transient ones from <status>; the permanent value wins."""
        root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
        result: dict[str, tuple[str, ...]] = {}
        for state in root.iter("node_state"):
            for nv in state.iterfind(f"transient_attributes/instance_attributes/nvpair[@name='{ATTRIBUTE}']"):
                result[state.get("uname")] = _parse_ips(nv.get("value", ""), state.get("uname"))
        for node in root.iter("node"):
            for nv in node.iterfind(f"instance_attributes/nvpair[@name='{ATTRIBUTE}']"):
                result[node.get("uname")] = _parse_ips(nv.get("value", ""), node.get("uname"))
        return cls(result)

    @classmethod
    def from_cib(cls, timeout: float = 10.0) -> "NodeMap":
        """Read the live CIB (or the file named by $CIB_file).  An empty map when Pacemaker is
        absent: addresses are then reported without node names."""
        if not shutil.which("cibadmin"):
            return cls()
        proc = subprocess.run(["cibadmin", "--query"], capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            return cls()
        return cls.from_cib_xml(proc.stdout)


def _parse_ips(text: str, where: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_address(ip)) for ip in text.split())
    except ValueError as exc:
        raise BadDiskSpec(f"bad IP in node address list for {where}: {exc}") from exc


def own_ceph_ips(session: CephSession) -> tuple[str, ...]:
    """The IP(s) of this node's Ceph clients as the cluster sees them.  Every librados client on
    the node uses the same source address towards the monitors and OSDs (same routes)."""
    return (session.own_addr().ip,)


def publish_node_addrs(node: str, ips: tuple[str, ...] | list[str], timeout: float = 10.0) -> None:
    """Store `ips` as the node's permanent `ravada-ceph-addrs` attribute (crm_attribute)."""
    proc = subprocess.run(["crm_attribute", "-t", "nodes", "-N", node, "-n", ATTRIBUTE,
                           "-v", " ".join(ips)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RbdError(f"crm_attribute could not set {ATTRIBUTE} on {node}: {proc.stderr.strip()}")


def pacemaker_fenced(node: str, timeout: float = 10.0, after: float | None = None) -> str | None:
    """When Pacemaker's fencing history holds a successful off/reboot of `node` and the node has
    not come back since (not online), a one-line description; otherwise None (also when
    Pacemaker is not running here: nothing is confirmed then).  With `after` (wall-clock
    seconds): a fencing completed after that time, whether or not the node is back since --
    whatever ran on it before then is gone."""
    history = _pacemaker_xml(["stonith_admin", "--history", node, "--output-as=xml"], timeout)
    how = fenced_in_history(history, node, after) if history else None
    if not how or after is not None:
        return how
    status = _pacemaker_xml(["crm_mon", "--one-shot", "--inactive", "--output-as=xml"], timeout)
    if not status or node_online(status, node) is not False:
        return None          # back online (so running new clients) or membership unknown
    return how


def _pacemaker_xml(argv: list[str], timeout: float) -> bytes | None:
    if not shutil.which(argv[0]):
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def node_online(crm_mon_xml: bytes | str, node: str) -> bool | None:
    """The node's online flag in `crm_mon --output-as=xml`, None when the node is not listed."""
    root = etree.fromstring(crm_mon_xml.encode() if isinstance(crm_mon_xml, str) else crm_mon_xml)
    for entry in root.iterfind("nodes/node"):
        if entry.get("name") == node:
            return entry.get("online") == "true"
    return None


def fenced_in_history(xml: bytes | str, node: str, after: float | None = None) -> str | None:
    """A successful off/reboot of `node` in `stonith_admin --history --output-as=xml` (completed
    after `after`, wall-clock seconds, when given: an unreadable time does not count then)."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml,
                            parser=etree.XMLParser(resolve_entities=False, no_network=True))
    for event in root.iter("fence_event"):
        if (event.get("target") == node and event.get("status") == "success"
                and event.get("action") in ("off", "reboot")):
            when = event.get("completed") or event.get("completed-time") or "?"
            if after is not None and (completed_epoch(when) or 0.0) <= after:
                continue
            return f"{event.get('action')} of {node} by {event.get('delegate', '?')} at {when}"
    return None


def completed_epoch(text: str) -> float | None:
    """Pacemaker's '2026-11-21 10:00:00Z' / '2026-11-21 10:00:00 +01:00' as epoch seconds."""
    text = text.strip().replace("Z", "+00:00")
    if len(text) > 6 and text[-6] in "+-" and text[-7] == " ":
        text = text[:-7] + text[-6:]
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.timestamp()      # no zone given: local time, as Pacemaker prints it
