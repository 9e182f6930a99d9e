"""fence_rbd: storage fencing of a node at the Ceph OSDs (fence-agents conventions).

`off` blocklists every Ceph client IP of the node (bare-IP entries 'IP:0/0'): all its clients,
running and future, get ESHUTDOWN from the OSDs and lose their watches at once, so their RBD
locks can be broken safely.  `on` removes those entries (needs an admin-like key), `status`
reports OFF when every IP of the node is blocklisted.

Pacemaker's fencer runs it without arguments and key=value lines on stdin; admins run it with
options (`fence_rbd -o off -n node2 --node-addrs 'node2:10.0.0.12'`).  The node's IPs come from
`node_addrs` or, when that is not given, from the CIB node attribute `ravada-ceph-addrs`.
"""
from __future__ import annotations

import ipaddress

from .. import fenceagent
from ..fenceagent import EXIT_OFF, EXIT_OK, Option
from .cluster import LONG_BLOCKLIST_SECONDS, CephSession
from .errors import RbdError
from .fencing import fence_ips, fenced_ips, unfence_ips
from .nodes import NodeMap

AGENT = fenceagent.FenceAgent(
    name="fence_rbd",
    shortdesc="Storage fencing: cut a node off the Ceph cluster (OSD blocklist)",
    longdesc=("Blocklists every Ceph client IP of the target node at the OSDs, so none of its clients "
              "(QEMU/librbd, krbd, CephFS) can write any more and their RBD locks can be broken safely. "
              "Use it as a second fencing level after power fencing, with meta provides=unfencing so "
              "the node is unfenced (entries removed) when it rejoins. Reboot means off: storage "
              "cannot be power-cycled."),
    options=(
        Option("ceph_conf", "Ceph configuration file", "/etc/ceph/ceph.conf", "--ceph-conf=[path]"),
        Option("ceph_id", "cephx user without 'client.' (needs mon 'profile rbd' for off; "
               "mon 'allow *' or 'allow command \"osd blocklist\"' for on)", "admin", "--ceph-id=[id]"),
        Option("keyring", "Keyring of ceph_id (default: from ceph.conf)", None, "--keyring=[path]"),
        Option("node_addrs", "node:IP[,IP];node:IP... (default: CIB node attribute ravada-ceph-addrs)",
               None, "--node-addrs=[map]"),
        Option("blocklist_expire", "Lifetime of the fence entries", str(LONG_BLOCKLIST_SECONDS),
               "--blocklist-expire=[seconds]"),
        Option("ceph_timeout", "Give up when Ceph does not answer within this time", "20",
               "--ceph-timeout=[seconds]"),
    ),
    default_action="off",
    plug_desc="Cluster node to fence, or its Ceph IP(s) (e.g. via pcmk_host_map)",
    automatic_on=True,
)


# Upper bounds: a blocklist entry may be meant to last (years); a Ceph call never needs an hour.
MAXIMUM_SECONDS = {"blocklist_expire": 10 * 365 * 86400.0, "ceph_timeout": 3600.0}


def _number(options: dict[str, str], name: str) -> float:
    return fenceagent.seconds(AGENT, options, name, MAXIMUM_SECONDS[name])


def target_ips(plug: str, node_map: NodeMap) -> tuple[str, ...]:
    """The node's IPs from the map; a plug that is itself an IP list ('10.0.0.12' or
    '10.0.0.12,10.0.1.12', as pcmk_host_map="node2:10.0.0.12" yields) is taken as is."""
    ips = node_map.ips_of(plug)
    if ips:
        return ips
    try:
        return tuple(str(ipaddress.ip_address(part)) for part in plug.replace("+", ",").split(",") if part)
    except ValueError:
        raise RbdError(f"no Ceph client IPs known for node {plug!r}: set node_addrs, the node "
                       f"attribute ravada-ceph-addrs, or map the node to its IPs with pcmk_host_map") from None


def run(action: str, options: dict[str, str]) -> int:
    expire, timeout = _number(options, "blocklist_expire"), _number(options, "ceph_timeout")
    node_map = NodeMap.parse(options["node_addrs"]) if options.get("node_addrs") else None
    if action == "validate-all":
        return EXIT_OK
    if action == "list":
        for node in (node_map or NodeMap.from_cib()).ips_by_node:
            print(f"{node},")
        return EXIT_OK
    conf, ceph_id, keyring = (fenceagent.option(AGENT, options, name) for name in ("ceph_conf", "ceph_id", "keyring"))
    with CephSession(conf, ceph_id, keyring, timeout=timeout) as session:
        if action == "monitor":
            session.blocklist_ls()
            return EXIT_OK
        node = fenceagent.target_of(options, action)
        ips = target_ips(node, node_map or NodeMap.from_cib())
        if action == "status":
            fenced = fenced_ips(session, ips)
            state = "OFF" if len(fenced) == len(ips) else "ON"
            print(f"Status: {state}")
            return EXIT_OFF if state == "OFF" else EXIT_OK
        if action in ("off", "reboot"):
            own = session.own_addr().ip
            if own in ips:
                raise RbdError(f"refusing to fence {node}: {own} is this fencing client's own address")
            fence_ips(session, ips, expire)
            if len(fenced_ips(session, ips)) != len(ips):
                raise RbdError(f"{node}: blocklist entries for {', '.join(ips)} not all visible after adding")
            print(f"Success: {node} fenced at the OSDs ({', '.join(ips)})")
            return EXIT_OK
        removed = unfence_ips(session, ips)
        if fenced_ips(session, ips):
            raise RbdError(f"{node}: still blocklisted after removing {removed}")
        print(f"Success: {node} unfenced ({', '.join(removed) or 'was not fenced'})")
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return fenceagent.main(AGENT, run, (RbdError,), argv)
