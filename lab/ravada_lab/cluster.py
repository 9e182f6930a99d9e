"""What Pacemaker thinks of the lab, read from `crm_mon --output-as=xml` inside a node."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lxml import etree

from .errors import LabError
from .state import LabState, node_run


@dataclass
class ClusterView:
    dc: str | None
    online: set[str]
    unclean: set[str]
    # pacemaker_remote nodes the cluster knows (crm_mon's type="remote"), online or not
    remote: set[str] = field(default_factory=set)
    standby: set[str] = field(default_factory=set)
    # resource id -> nodes it is active on (a migrating resource can list two)
    resources: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    fencing_history: list[dict] = field(default_factory=list)

    def settled(self, nodes: list[str] | set[str]) -> bool:
        """Every one of `nodes` online and clean, a DC elected, and each remote node's
        connection resource (named like it) started: a remote node counts as online as soon
        as its connection begins to start."""
        return (self.dc is not None and set(nodes) <= self.online and not self.unclean
                and all(self.roles.get(n) == "Started" for n in self.remote & set(nodes)))

    @classmethod
    def parse(cls, xml: bytes) -> "ClusterView":
        root = etree.fromstring(xml)
        dc = root.find("summary/current_dc")
        view = cls(
            dc=dc.get("name") if dc is not None and dc.get("present") == "true" else None,
            online={n.get("name") for n in root.iterfind("nodes/node") if n.get("online") == "true"},
            unclean={n.get("name") for n in root.iterfind("nodes/node") if n.get("unclean") == "true"},
            remote={n.get("name") for n in root.iterfind("nodes/node") if n.get("type") == "remote"},
            standby={n.get("name") for n in root.iterfind("nodes/node") if n.get("standby") == "true"},
        )
        for rsc in root.iter("resource"):
            view.resources[rsc.get("id")] = [n.get("name") for n in rsc.iterfind("node")]
            view.roles[rsc.get("id")] = rsc.get("role", "")
        for failure in root.iterfind("failures/failure"):
            view.failed[failure.get("op_key", "")] = (
                f"{failure.get('node')}: {failure.get('status')} {failure.get('exitreason', '')}")
        for event in root.iterfind("fence_history/fence_event"):
            view.fencing_history.append(dict(event.attrib))
        return view


def observe(state: LabState, via: str | None = None) -> ClusterView:
    """crm_mon from `via` (default: the first healthy node)."""
    candidates = [via] if via else state.healthy_nodes()
    if not candidates:
        raise LabError("no lab node is powered on, running and connected")
    result = node_run(state, candidates[0],
                      ["crm_mon", "-1", "--output-as=xml", "--include=all"], check=False)
    if not result.stdout.lstrip().startswith("<"):
        raise LabError(f"crm_mon on {candidates[0]}: {result.stderr.strip()}")
    return ClusterView.parse(result.stdout.encode())


def wait_until(state: LabState, predicate, what: str, timeout: float,
               via: str | None = None) -> ClusterView:
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            view = observe(state, via)
            if predicate(view):
                return view
        except LabError as e:
            last_error = f" ({e})"
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")
        time.sleep(0.5)
