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

import argparse
import ipaddress
import sys

from lxml import etree

from .cluster import LONG_BLOCKLIST_SECONDS, CephSession
from .errors import RbdError
from .fencing import fence_ips, fenced_ips, unfence_ips
from .nodes import NodeMap

AGENT = "fence_rbd"
ACTIONS = ("on", "off", "reboot", "status", "list", "monitor", "metadata", "validate-all")
EXIT_OK, EXIT_FAIL, EXIT_OFF = 0, 1, 2
# name -> (getopt, description, default)
PARAMETERS = {
    "action": ("-o, --action=[action]", "Fencing action (reboot means off: storage cannot be power-cycled)", "off"),
    "plug": ("-n, --plug=[node]", "Cluster node to fence, or its Ceph IP(s) (e.g. via pcmk_host_map)", None),
    "port": ("--port=[node]", "Cluster node to fence (deprecated: use plug)", None),
    "ceph_conf": ("--ceph-conf=[path]", "Ceph configuration file", "/etc/ceph/ceph.conf"),
    "ceph_id": ("--ceph-id=[id]", "cephx user without 'client.' (needs mon 'profile rbd' for off; "
                "mon 'allow *' or 'allow command \"osd blocklist\"' for on)", "admin"),
    "keyring": ("--keyring=[path]", "Keyring of ceph_id (default: from ceph.conf)", None),
    "node_addrs": ("--node-addrs=[map]", "node:IP[,IP];node:IP... (default: CIB node attribute "
                   "ravada-ceph-addrs)", None),
    "blocklist_expire": ("--blocklist-expire=[seconds]", "Lifetime of the fence entries", str(LONG_BLOCKLIST_SECONDS)),
    "ceph_timeout": ("--ceph-timeout=[seconds]", "Give up when Ceph does not answer within this time", "20"),
}
IGNORED = ("nodename", "verbose", "debug", "separator")


def metadata() -> bytes:
    agent = etree.Element("resource-agent", name=AGENT,
                          shortdesc="Storage fencing: cut a node off the Ceph cluster (OSD blocklist)")
    etree.SubElement(agent, "longdesc").text = (
        "Blocklists every Ceph client IP of the target node at the OSDs, so none of its clients "
        "(QEMU/librbd, krbd, CephFS) can write any more and their RBD locks can be broken safely. "
        "Use it as a second fencing level after power fencing, with meta provides=unfencing so "
        "the node is unfenced (entries removed) when it rejoins.")
    etree.SubElement(agent, "vendor-url").text = "https://ceph.io"
    params = etree.SubElement(agent, "parameters")
    for name, (getopt, desc, default) in PARAMETERS.items():
        attrs = {"name": name, "unique": "0", "required": "0"}
        if name == "plug":
            attrs["obsoletes"] = "port"
        if name == "port":
            attrs["deprecated"] = "1"
        param = etree.SubElement(params, "parameter", attrs)
        etree.SubElement(param, "getopt", mixed=getopt)
        content = etree.SubElement(param, "content", type="string")
        if default is not None:
            content.set("default", default)
        etree.SubElement(param, "shortdesc", lang="en").text = desc
    actions = etree.SubElement(agent, "actions")
    for action in ACTIONS:
        attrs = {"name": action}
        if action == "on":
            attrs["automatic"] = "1"      # Pacemaker unfences with it when provides=unfencing
        etree.SubElement(actions, "action", attrs)
    return etree.tostring(agent, pretty_print=True, xml_declaration=True, encoding="UTF-8")


def options_from_stdin(stream) -> dict[str, str]:
    options = {}
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise RbdError(f"stdin line {number}: expected key=value, got {line!r}")
        options[key.strip()] = value.strip()
    return options


def options_from_args(argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=AGENT, description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--action", default="off", choices=ACTIONS)
    parser.add_argument("-n", "--plug", "--port", dest="plug")
    for name in ("ceph_conf", "ceph_id", "keyring", "node_addrs", "blocklist_expire", "ceph_timeout"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def _option(options: dict[str, str], name: str) -> str | None:
    value = options.get(name)
    return value if value not in (None, "") else PARAMETERS[name][2]


def _number(options: dict[str, str], name: str) -> float:
    try:
        value = float(_option(options, name))
    except ValueError:
        raise RbdError(f"{name} must be a number of seconds, got {options.get(name)!r}") from None
    if value <= 0:
        raise RbdError(f"{name} must be positive")
    return value


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


def run(options: dict[str, str]) -> int:
    action = options.get("action") or "off"
    if action == "metadata":
        sys.stdout.buffer.write(metadata())
        return EXIT_OK
    if action not in ACTIONS:
        raise RbdError(f"unsupported action {action!r} (supported: {', '.join(ACTIONS)})")
    for key in options:
        if key not in PARAMETERS and key not in IGNORED and not key.startswith("pcmk_"):
            print(f"{AGENT}: ignoring unknown option {key!r}", file=sys.stderr)
    expire, timeout = _number(options, "blocklist_expire"), _number(options, "ceph_timeout")
    node_map = NodeMap.parse(options["node_addrs"]) if options.get("node_addrs") else None
    if action == "validate-all":
        return EXIT_OK
    if action == "list":
        for node in (node_map or NodeMap.from_cib()).ips_by_node:
            print(f"{node},")
        return EXIT_OK
    with CephSession(_option(options, "ceph_conf"), _option(options, "ceph_id"),
                     _option(options, "keyring"), timeout=timeout) as session:
        if action == "monitor":
            session.blocklist_ls()
            return EXIT_OK
        node = options.get("plug") or options.get("port")
        if not node:
            raise RbdError(f"action {action} needs the node: plug=NODE (or port=NODE)")
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
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = options_from_args(argv) if argv else options_from_stdin(sys.stdin)
        return run(options)
    except RbdError as exc:
        print(f"{AGENT}: {exc.reason}", file=sys.stderr)
        return EXIT_FAIL
