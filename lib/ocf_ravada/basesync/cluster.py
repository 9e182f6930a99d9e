"""Who holds what, and what this node tells the cluster: through ocf_ravada.pacemaker only.

This node publishes transient node attributes (lifetime reboot: after a reboot a copy counts
only once verified again):
    ravada-base-<name> = <sha256>    its copy of base <name> is present and verified
    ravada-basesync-status = <text>  progress ("in sync 3/3", "fetching deb12 40% ...")
The location rule of cib-templates/base-location.xml keeps a VM (meta ravada-base=<name>)
off nodes without ravada-base-<name>; ravada-place reads the same attributes.
"""
from __future__ import annotations

from typing import Protocol

from lxml import etree

from .. import pacemaker
from ..deadline import Deadline
from ..log import Log

PREFIX = "ravada-base-"
STATUS_ATTRIBUTE = "ravada-basesync-status"
CALL_LIMIT = 10.0


def attribute(name: str) -> str:
    return PREFIX + name


class Cluster(Protocol):
    def refresh(self) -> None: ...
    def members(self) -> list[str]: ...
    def holders(self, name: str, digest: str) -> set[str]: ...
    def published(self) -> dict[str, str]: ...
    def publish(self, name: str, digest: str) -> None: ...
    def withdraw(self, name: str) -> None: ...
    def set_status(self, text: str) -> None: ...


def transient_attributes(cib: etree._Element, node: str) -> dict[str, str]:
    """This node's transient attributes (the ones crm_attribute --lifetime reboot writes)."""
    names_by_id = {n.get("id"): n.get("uname") for n in cib.iter("node")}
    for state in cib.iter("node_state"):
        if (state.get("uname") or names_by_id.get(state.get("id"))) == node:
            return {nv.get("name"): nv.get("value", "")
                    for nv in state.iterfind("transient_attributes/instance_attributes/nvpair")}
    return {}


class PacemakerCluster:
    """The live cluster: the CIB read once per reconcile pass, attributes written at once."""

    def __init__(self, node: str, resource: str, log: Log) -> None:
        self.node = node
        self.resource = resource.split(":")[0]   # an anonymous clone's instance: rsc:N
        self.log = log
        self._cib: etree._Element | None = None
        self._members: list[str] = []
        self._status_text: str | None = None

    def refresh(self) -> None:
        deadline = Deadline(2 * CALL_LIMIT)
        try:
            self._cib = pacemaker.query_cib(deadline, limit=CALL_LIMIT)
            status = pacemaker.cluster_status(deadline, limit=CALL_LIMIT)
            self._members = sorted(set(pacemaker.resource_nodes(status, self.resource)))
        except pacemaker.PacemakerError as err:
            self.log.warning(f"cluster view not refreshed: {err.reason}")

    def members(self) -> list[str]:
        return list(self._members)

    def holders(self, name: str, digest: str) -> set[str]:
        if self._cib is None:
            return set()
        values = pacemaker.node_attributes(self._cib, attribute(name))
        return {node for node, value in values.items() if value == digest and node != self.node}

    def published(self) -> dict[str, str]:
        if self._cib is None:
            return {}
        return {name[len(PREFIX):]: value for name, value in transient_attributes(self._cib, self.node).items()
                if name.startswith(PREFIX) and len(name) > len(PREFIX)}

    def publish(self, name: str, digest: str) -> None:
        self._write(attribute(name), digest)

    def withdraw(self, name: str) -> None:
        try:
            pacemaker.delete_node_attribute(attribute(name), Deadline(CALL_LIMIT), self.node,
                                            lifetime="reboot", limit=CALL_LIMIT)
        except pacemaker.PacemakerError as err:
            self.log.warning(f"{attribute(name)} not withdrawn: {err.reason}")

    def set_status(self, text: str) -> None:
        if text != self._status_text:
            self._write(STATUS_ATTRIBUTE, text)
            self._status_text = text

    def _write(self, name: str, value: str) -> None:
        try:
            pacemaker.set_node_attribute(name, value, Deadline(CALL_LIMIT), self.node,
                                         lifetime="reboot", limit=CALL_LIMIT)
        except pacemaker.PacemakerError as err:
            self.log.warning(f"{name} not published: {err.reason}")


class StandaloneCluster:
    """Run by hand, outside a cluster: peers are the nodes named in `hosts`; nothing is
    published (the log says what would be)."""

    def __init__(self, node: str, peers: list[str], log: Log) -> None:
        self.node = node
        self._members = sorted(set(peers) | {node})
        self.log = log
        self._published: dict[str, str] = {}

    def refresh(self) -> None:
        pass

    def members(self) -> list[str]:
        return list(self._members)

    def holders(self, name: str, digest: str) -> set[str]:
        return set()

    def published(self) -> dict[str, str]:
        return dict(self._published)

    def publish(self, name: str, digest: str) -> None:
        self.log.info(f"not in a cluster; would publish {attribute(name)}={digest}")
        self._published[name] = digest

    def withdraw(self, name: str) -> None:
        self.log.info(f"not in a cluster; would withdraw {attribute(name)}")
        self._published.pop(name, None)

    def set_status(self, text: str) -> None:
        pass
