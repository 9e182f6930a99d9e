"""Node lifecycle: drain, undrain, shutdown and wake one cluster node.

drain     plans the evacuation with ravada-place's planner (the same plan `ravada-place drain`
          shows), then asks Pacemaker to live-migrate each VM: `crm_resource --ban` keeps it
          off the node, `crm_resource --move` sends it where the plan puts it.  Every other
          VM known then is banned from the node too (VMs defined later are not).  It waits, then
          reports each VM as moved, or not, and why (Pacemaker's failure, or still there when
          time ran out).  Once a VM has arrived its --move constraint is cleared, so only the
          ban remains.  The node gets node attribute ravada-drained (the time of the drain).
          A VM that no other node can hold makes the drain refuse, unless forced: then it is
          banned too and stops.  When no node publishes utilization (cpu, hv_memory),
          capacity is unknown: every node is taken as able to hold every VM, as Pacemaker
          places without a placement-strategy; bans, base rules and colocations still count.
undrain   removes the bans of the node (crm_resource --clear) and the attribute.
shutdown  drain, then stop Pacemaker and corosync on the node, then power it off.  A remote
          node (pacemaker_remote) runs neither: its connection resource is disabled
          (target-role Stopped, as `pcs resource disable` does) and the node powered off once
          the cluster sees it offline; pacemaker-remoted dies with it, nothing left to fence.
wake      sends a Wake-on-LAN packet to the MAC in node attribute ravada-mac (UDP 7 and 9)
          and waits until the node is online in the cluster again.  For a remote node whose
          connection is disabled it waits until pacemaker-remoted accepts TCP connections at
          the connection's server and port, then enables the connection (a connection
          started earlier would fail and be banned from every cluster node).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from lxml import etree

from . import pacemaker, wol
from .deadline import Deadline
from .nodeshell import NodeCommandError, NodeShell

DRAINED_ATTRIBUTE = "ravada-drained"
MAC_ATTRIBUTE = "ravada-mac"
POLL = 2.0
WOL_RESEND = 20.0
REMOTE_PORT = 3121      # pacemaker-remoted's default (ocf:pacemaker:remote's port)


class OpsError(Exception):
    """The operation cannot be done; the message says why in one line."""


class Refused(OpsError):
    """Doing it would be unsafe (e.g. a VM with nowhere to go); --force overrides."""


@dataclass
class DrainReport:
    node: str
    moved: dict[str, str] = field(default_factory=dict)          # VM -> node it runs on now
    not_moved: dict[str, str] = field(default_factory=dict)      # VM -> why
    stopped: list[str] = field(default_factory=list)             # forced: no node could hold them

    @property
    def complete(self) -> bool:
        return not self.not_moved

    def lines(self) -> list[str]:
        out = [f"{vm}: moved to {node}" for vm, node in sorted(self.moved.items())]
        out += [f"{vm}: NOT moved: {why}" for vm, why in sorted(self.not_moved.items())]
        out += [f"{vm}: stopped (no other node can hold it; --force)" for vm in sorted(self.stopped)]
        return out or [f"no VM runs on {self.node}"]


def _snapshot(deadline: Deadline):
    """(CIB, crm_mon status, placement cluster) of one moment."""
    from ravada_placement.cib import cluster_from_cib
    from ravada_placement.model import InputError
    cib = pacemaker.query_cib(deadline)
    status = pacemaker.cluster_status(deadline)
    try:
        return cib, status, cluster_from_cib(cib, status)
    except InputError as err:
        raise OpsError(f"cannot plan: {err}") from None


def _active(status: etree._Element) -> dict[str, set[str]]:
    from ravada_placement.pacemaker import active_nodes
    return active_nodes(status)


def _failure(status: etree._Element, resource: str) -> str | None:
    """Pacemaker's last recorded failure of the resource, as crm_mon shows it."""
    for failure in status.iterfind("failures/failure"):
        if (failure.get("op_key") or "").startswith(f"{resource}_"):
            reason = failure.get("exitreason") or failure.get("exitstatus") or failure.get("status") or "failed"
            return f"{failure.get('task')} failed on {failure.get('node')}: {reason}"
    return None


def _failed(status: etree._Element, resource: str) -> bool:
    """crm_mon marks the resource FAILED (a failed start or migration shows it active there)."""
    return any(r.get("failed") == "true" for r in status.iter("resource")
               if r.get("id", "").split(":", 1)[0] == resource)


def _unknown_capacity_as_unbounded(cluster) -> bool:
    """Without utilization on any node, Pacemaker places by scores alone: give each node room
    for every VM of the cluster, so only eligibility (bans, bases, colocations) decides."""
    if any(info.cpu is not None and info.memory is not None for info in cluster.nodes.values()):
        return False
    cpu = 1 + sum(vm.cpu for vm in cluster.vms.values()) + sum(n.reserved[0] for n in cluster.nodes.values())
    memory = 1 + sum(vm.memory for vm in cluster.vms.values()) + sum(n.reserved[1] for n in cluster.nodes.values())
    cluster.nodes = {name: replace(info, cpu=cpu, memory=memory) for name, info in cluster.nodes.items()}
    return True


def plan_drain(node: str, deadline: Deadline, policy: str = "balanced"):
    from ravada_placement.model import InputError
    from ravada_placement.plan import plan_drain as planner
    from ravada_placement.policies import make_policy
    from ravada_placement.state import Limits
    cib, status, cluster = _snapshot(deadline)
    if node not in cluster.nodes:
        raise OpsError(f"unknown node {node!r} (nodes: {', '.join(cluster.nodes)})")
    _unknown_capacity_as_unbounded(cluster)
    try:
        return cluster, planner(cluster, make_policy(policy), Limits(), node)
    except InputError as err:
        raise OpsError(f"cannot plan: {err}") from None


def drain(node: str, deadline: Deadline, force: bool = False, policy: str = "balanced",
          log: Callable[[str], None] = print, dry_run: bool = False,
          tick: Callable[[], None] = lambda: None) -> DrainReport:
    """`tick` runs before each look at the cluster (tests advance a simulated cluster)."""
    cluster, plan = plan_drain(node, deadline, policy)
    report = DrainReport(node)
    leaving = [vm for vm in cluster.vms.values() if vm.node == node]
    others = [n for n, info in cluster.nodes.items() if n != node and info.unavailable is None]
    if leaving and not others and not force:
        raise Refused(f"{node} is the last node able to hold VMs ({len(leaving)} run there); "
                      "use --force to stop them instead")
    if plan.failures and not force:
        reasons = "; ".join(f"{vm}: {why}" for vm, why in sorted(plan.failures.items()))
        raise Refused(f"no other node can hold {len(plan.failures)} VM(s) of {node}: {reasons} "
                      "(use --force to stop them)")
    for move in plan.moves:
        log(f"plan: {move.vm} {move.source} -> {move.target}")
    for vm in sorted(plan.failures):
        log(f"plan: {vm} has nowhere to go ({plan.failures[vm]}): it will be stopped (--force)")
    if dry_run:
        return report
    pacemaker.set_node_attribute(DRAINED_ATTRIBUTE, str(int(time.time())), deadline, node=node)
    targets: dict[str, str | None] = {}     # resource -> planned node (None: it stops)
    for move in plan.moves:
        for rsc in plan.resources.get(move.vm, cluster.vms[move.vm].resources):
            # The move first: a ban alone makes Pacemaker migrate the VM wherever it likes at
            # once, and the move arriving mid-migration turns it into a stop and a start.
            pacemaker.move_resource(rsc, move.target, deadline)
            pacemaker.ban_resource(rsc, node, deadline)
            targets[rsc] = move.target
    for vm in plan.failures:
        for rsc in cluster.vms[vm].resources:
            pacemaker.ban_resource(rsc, node, deadline)
            targets[rsc] = None
    # Every other VM is kept off too: with placement-strategy balanced Pacemaker would
    # otherwise fill the emptied node with VMs from elsewhere.
    for vm in cluster.vms.values():
        if vm.node != node:
            for rsc in vm.resources:
                pacemaker.ban_resource(rsc, node, deadline)
    _wait_moved(node, targets, deadline, report, log, tick)
    return report


def _wait_moved(node: str, targets: dict[str, str | None], deadline: Deadline, report: DrainReport,
                log: Callable[[str], None], tick: Callable[[], None]) -> None:
    pending = dict(targets)
    status = None
    while pending:
        tick()
        try:
            status = pacemaker.cluster_status(deadline)
        except pacemaker.ToolTimeout:
            break       # the deadline ran out during the look: report from the last one
        active = _active(status)
        for rsc in list(pending):
            where = active.get(rsc, set())
            if pending[rsc] is None:
                if not where:
                    report.stopped.append(rsc)
                    pending.pop(rsc)
            elif where and node not in where and not _failed(status, rsc):
                report.moved[rsc] = ", ".join(sorted(where))
                log(f"{rsc}: now on {report.moved[rsc]}")
                # Arrived: only the ban should stay, not a pin to the target.
                pacemaker.clear_resource(rsc, pending.pop(rsc), deadline)
            elif not where and _failure(status, rsc):
                report.not_moved[rsc] = f"stopped: {_failure(status, rsc)}"
                pending.pop(rsc)
        if pending and not deadline.pause(POLL):
            break
    for rsc, target in pending.items():
        failure = _failure(status, rsc) if status is not None else None
        where = ", ".join(sorted(_active(status).get(rsc, set()))) if status is not None else "?"
        state = "FAILED on" if status is not None and _failed(status, rsc) else "still on"
        what = "not stopped" if target is None else f"{state} {where or 'no node'}"
        report.not_moved[rsc] = f"{what} when time ran out" + (f"; {failure}" if failure else "")


def undrain(node: str, deadline: Deadline, log: Callable[[str], None] = print) -> list[str]:
    """Remove the node's bans (those crm_resource --ban made); the VMs may come back."""
    cib = pacemaker.query_cib(deadline)
    cleared = []
    for location in cib.iterfind("configuration/constraints/rsc_location"):
        if location.get("id", "").startswith("cli-ban-") and location.get("node") == node and location.get("rsc"):
            pacemaker.clear_resource(location.get("rsc"), node, deadline)
            cleared.append(location.get("rsc"))
            log(f"{location.get('rsc')}: may run on {node} again")
    if pacemaker.node_attribute(cib, node, DRAINED_ATTRIBUTE) is not None:
        pacemaker.delete_node_attribute(DRAINED_ATTRIBUTE, deadline, node=node)
    return cleared


def wait_online(node: str, online: bool, deadline: Deadline, between: Callable[[], None] = lambda: None) -> bool:
    while True:
        try:
            state = pacemaker.node_online(pacemaker.cluster_status(deadline), node)
        except pacemaker.PacemakerError:
            state = None
        if bool(state) == online:
            return True
        between()
        if not deadline.pause(POLL):
            return False


def node_kind(node: str, deadline: Deadline) -> tuple[str, etree._Element | None]:
    """(kind, connection): #kind of the node ("cluster", "remote", "container") and, for a
    remote node, its ocf:pacemaker:remote primitive."""
    cib = pacemaker.query_cib(deadline)
    kind = pacemaker.node_kinds(cib).get(node)
    if kind is None:
        raise OpsError(f"unknown node {node!r}")
    return kind, pacemaker.remote_connection(cib, node)


def disconnect_remote(node: str, connection: str, deadline: Deadline, log: Callable[[str], None]) -> None:
    """Stop a remote node's connection (what still runs there stops first) and wait until
    the cluster sees the node offline."""
    log(f"{node}: disabling its connection resource {connection}")
    pacemaker.set_meta(connection, "target-role", "Stopped", deadline)
    if not wait_online(node, False, deadline):
        raise OpsError(f"{node} is still online in the cluster after its connection {connection} was disabled")


def stop_stack(node: str, shell: NodeShell, deadline: Deadline, log: Callable[[str], None]) -> None:
    """Stop Pacemaker on the node (it stops what still runs there), wait until the cluster
    sees it offline, then stop corosync."""
    log(f"{node}: stopping pacemaker")
    try:
        shell.stop_pacemaker(node, deadline.bounded(120))
        if node != shell.local_node and not wait_online(node, False, deadline):
            raise OpsError(f"{node} is still online in the cluster after pacemakerd --shutdown")
        log(f"{node}: stopping corosync")
        shell.stop_corosync(node, deadline.bounded(60))
    except NodeCommandError as err:
        raise OpsError(str(err)) from None


def shutdown(node: str, deadline: Deadline, shell: NodeShell, force: bool = False,
             log: Callable[[str], None] = print) -> DrainReport:
    kind, connection = node_kind(node, deadline)
    if kind == "container":
        raise OpsError(f"{node} is a guest node (a VM resource's remote-node): stop that resource instead")
    if kind == "remote" and connection is None:
        raise OpsError(f"remote node {node} has no ocf:pacemaker:remote connection resource to disable")
    report = drain(node, deadline, force=force, log=log)
    for line in report.lines():
        log(line)
    if not report.complete and not force:
        raise Refused(f"{node} still holds VMs; not shutting it down (use --force)")
    if connection is not None:
        disconnect_remote(node, connection.get("id"), deadline, log)
    else:
        stop_stack(node, shell, deadline, log)
    log(f"{node}: powering off")
    try:
        shell.power_off(node, deadline.bounded(60))
    except NodeCommandError as err:
        raise OpsError(str(err)) from None
    return report


def wake(node: str, deadline: Deadline, broadcast: str = "255.255.255.255",
         log: Callable[[str], None] = print, wait: bool = True) -> bool:
    cib = pacemaker.query_cib(deadline)
    mac_text = pacemaker.node_attribute(cib, node, MAC_ATTRIBUTE)
    if mac_text is None:
        raise OpsError(f"node {node} has no node attribute {MAC_ATTRIBUTE} (set it with "
                       f"crm_attribute --node {node} --name {MAC_ATTRIBUTE} --update MAC)")
    try:
        mac = wol.parse_mac(mac_text)
    except ValueError as err:
        raise OpsError(f"node attribute {MAC_ATTRIBUTE} of {node}: {err}") from None
    last = [0.0]

    def send() -> None:
        if time.monotonic() - last[0] >= WOL_RESEND:
            try:
                wol.send(mac, broadcast)
            except OSError as err:
                raise OpsError(f"cannot send the Wake-on-LAN packet to {broadcast}: {err.strerror}") from None
            last[0] = time.monotonic()
            log(f"{node}: Wake-on-LAN packet for {mac_text} sent to {broadcast} udp 7 and 9")

    send()
    connection = pacemaker.remote_connection(cib, node)
    if connection is not None and _disabled(connection):
        if not wait:
            return True
        address = _remote_address(connection)
        log(f"{node}: waiting for pacemaker-remoted at {address[0]} port {address[1]}")
        if not _wait_listening(address, deadline, send):
            return False
        log(f"{node}: enabling its connection resource {connection.get('id')}")
        pacemaker.delete_meta(connection.get("id"), "target-role", deadline)
    if not wait:
        return True
    return wait_online(node, True, deadline, send)


def _disabled(primitive: etree._Element) -> bool:
    roles = [nv.get("value", "") for nv in primitive.iterfind("meta_attributes/nvpair")
             if nv.get("name") == "target-role"]
    return any(role.strip().lower() == "stopped" for role in roles)


def _remote_address(connection: etree._Element) -> tuple[str, int]:
    """(server, port) of an ocf:pacemaker:remote primitive (server defaults to its id)."""
    params = {nv.get("name"): nv.get("value", "") for nv in connection.iterfind("instance_attributes/nvpair")}
    try:
        port = int(params.get("port") or REMOTE_PORT)
    except ValueError:
        raise OpsError(f"connection {connection.get('id')}: port {params.get('port')!r} is not a number") from None
    return params.get("server") or connection.get("id"), port


def _wait_listening(address: tuple[str, int], deadline: Deadline, between: Callable[[], None]) -> bool:
    while True:
        try:
            with socket.create_connection(address, timeout=max(0.1, deadline.bounded(5))):
                return True
        except OSError:
            pass
        between()
        if not deadline.pause(POLL):
            return False
