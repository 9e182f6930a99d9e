"""Which cluster node a Ceph client address belongs to.

Each node publishes the IP(s) its Ceph clients use, as seen by Ceph, in the permanent node
attribute `ravada-ceph-addrs` (space separated), e.g.
    crm_attribute -t nodes -N node1 -n ravada-ceph-addrs -v "10.0.0.11"
Agents read them from the CIB; tools and fence_rbd also accept an explicit map
"node1:10.0.0.11,10.0.1.11;node2:10.0.0.12".

Pacemaker is reached only through ocf_ravada.pacemaker (bounded, typed errors); a cluster
that does not answer yields no node names, never an exception the caller did not ask for.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable
from datetime import datetime

from lxml import etree

from .. import pacemaker, safexml
from ..deadline import Deadline
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
    def from_cib_xml(cls, xml: bytes | str | etree._Element) -> "NodeMap":
        """Node attributes from a CIB (or its <nodes>/<status> section), with Pacemaker's
        precedence: a transient value (<status>) wins over the permanent one (<nodes>)."""
        root = xml if isinstance(xml, etree._Element) else _parse(xml, "the CIB")
        return cls({node: _parse_ips(value, node)
                    for node, value in pacemaker.node_attributes(root, ATTRIBUTE).items()})

    @classmethod
    def from_cib(cls, timeout: float = 10.0, warn: Callable[[str], None] | None = None) -> "NodeMap":
        """Read the live CIB (or the file named by $CIB_file), within `timeout` seconds.  An
        empty map when Pacemaker is absent, does not answer in time or fails (told to `warn`
        when given): addresses are then reported without node names."""
        try:
            return cls.from_cib_xml(pacemaker.query_cib(Deadline(timeout)))
        except pacemaker.PacemakerError as err:
            if warn is not None:
                warn(f"node names of Ceph clients unknown: {err.reason}")
            return cls()


def _parse_ips(text: str, where: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_address(ip)) for ip in text.split())
    except ValueError as exc:
        raise BadDiskSpec(f"bad IP in node address list for {where}: {exc}") from exc


def own_ceph_ips(session: CephSession) -> tuple[str, ...]:
    """The IP(s) of this node's Ceph clients as the cluster sees them.  Every librados client on
    the node uses the same source address towards the monitors and OSDs (same routes)."""
    return (session.own_addr().ip,)


def local_node_name(timeout: float = 10.0) -> str | None:
    """This node's cluster name (crm_node -n), None when Pacemaker cannot tell."""
    try:
        return pacemaker.local_node(Deadline(timeout))
    except pacemaker.PacemakerError:
        return None


def publish_node_addrs(node: str, ips: tuple[str, ...] | list[str], timeout: float = 10.0) -> None:
    """Store `ips` as the node's permanent `ravada-ceph-addrs` attribute (crm_attribute)."""
    try:
        pacemaker.set_node_attribute(ATTRIBUTE, " ".join(ips), Deadline(timeout), node=node)
    except pacemaker.PacemakerError as err:
        raise RbdError(f"could not set {ATTRIBUTE} on {node}: {err.reason}") from None


def pacemaker_fenced(node: str, timeout: float = 10.0, after: float | None = None) -> str | None:
    """When Pacemaker's fencing history holds a successful off/reboot of `node` and the node has
    not come back since (not online), a one-line description; otherwise None (also when
    Pacemaker is not running here: nothing is confirmed then).  With `after` (wall-clock
    seconds): a fencing completed after that time, whether or not the node is back since --
    whatever ran on it before then is gone."""
    deadline = Deadline(timeout)
    try:
        history = pacemaker.fencing_history(node, deadline)
    except pacemaker.PacemakerError:
        return None          # nothing confirmed
    how = fenced_in_history(history, node, after)
    if not how or after is not None:
        return how
    try:
        status = pacemaker.cluster_status(deadline)
    except pacemaker.PacemakerError:
        return None          # membership unknown
    if pacemaker.node_online(status, node) is not False:
        return None          # back online (so running new clients) or not listed
    return how


def _parse(xml: bytes | str, what: str) -> etree._Element:
    try:
        return safexml.parse(xml, what)
    except safexml.UnsafeXml as err:
        raise RbdError(str(err)) from None


def node_online(crm_mon_xml: bytes | str | etree._Element, node: str) -> bool | None:
    """The node's online flag in `crm_mon --output-as=xml`, None when the node is not listed."""
    root = crm_mon_xml if isinstance(crm_mon_xml, etree._Element) else _parse(crm_mon_xml, "crm_mon's output")
    return pacemaker.node_online(root, node)


def fenced_in_history(xml: bytes | str | etree._Element, node: str, after: float | None = None) -> str | None:
    """A successful off/reboot of `node` in `stonith_admin --history --output-as=xml` (completed
    after `after`, wall-clock seconds, when given: an unreadable time does not count then)."""
    root = xml if isinstance(xml, etree._Element) else _parse(xml, "the fencing history")
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
