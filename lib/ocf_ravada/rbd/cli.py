"""ravada-rbd: look at and safely release the locks of RBD images used by VMs.

  ravada-rbd status POOL/IMAGE          who has it open (with node names), lock owner, fences
  ravada-rbd release POOL/IMAGE         fence + break a stale lock (same rules as the agent)
             [--dry-run] [--force-after-fence]
  ravada-rbd whoami                     this node's Ceph client IP(s), as the cluster sees them
  ravada-rbd publish [--node NODE]      store them in the node attribute ravada-ceph-addrs

Exit codes: 0 done (status: reported), 1 refused or failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from .addresses import ClientAddr
from .cluster import CephSession
from .disks import RbdDisk
from .errors import BadDiskSpec, RbdError
from .fencing import fenced_ips
from .guard import Policy, RbdGuard
from .image_state import ImageState, read_image_state
from .nodes import NodeMap, own_ceph_ips, pacemaker_fenced, publish_node_addrs

PROG = "ravada-rbd"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="/etc/ceph/ceph.conf", help="Ceph configuration file")
    parser.add_argument("--id", dest="ceph_id", default="admin", help="cephx user without 'client.'")
    parser.add_argument("--keyring", help="keyring of --id (default: from the Ceph config)")
    parser.add_argument("--node-addrs", help="node:IP[,IP];node:IP (default: CIB attribute ravada-ceph-addrs)")
    parser.add_argument("--timeout", type=float, default=20.0, help="give up when Ceph does not answer (s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="watchers, lock owner and fences of an image")
    status.add_argument("image", metavar="POOL/IMAGE")
    release = sub.add_parser("release", help="fence and break a stale lock")
    release.add_argument("image", metavar="POOL/IMAGE")
    release.add_argument("--dry-run", action="store_true", help="only say what would be done")
    release.add_argument("--force-after-fence", action="store_true",
                         help="also cut off watchers whose node is confirmed fenced (Pacemaker "
                              "fencing history or fence_rbd)")
    sub.add_parser("whoami", help="this node's Ceph client IP(s)")
    publish = sub.add_parser("publish", help="set this node's ravada-ceph-addrs attribute")
    publish.add_argument("--node", help="node name (default: crm_node -n)")
    return parser.parse_args(argv)


def describe(state: ImageState, guard: RbdGuard, blocklisted: list[str]) -> dict:
    def who(addr: ClientAddr) -> dict:
        return {"addr": str(addr), "node": guard.node_map.node_of(addr)}
    if state.foreign_lock:
        verdict = "foreign advisory lock"
    elif state.watchers:
        verdict = "in use"
    elif state.holders:
        verdict = "stale lock (owner has no watch): 'release' fences and breaks it"
    else:
        verdict = "free"
    return {
        "image": state.disk.spec,
        "watchers": [{**who(w.addr), "gid": w.gid, "cookie": w.cookie} for w in state.watchers],
        "lock": None if not state.holders else {
            "tag": state.lock_tag,
            "holders": [{**who(h.addr), "entity": h.entity, "cookie": h.cookie,
                         "live": state.is_watched_by(h.addr)} for h in state.holders]},
        "blocklisted": blocklisted,
        "verdict": verdict,
    }


def print_status(info: dict) -> None:
    print(f"image:      {info['image']}")
    print(f"verdict:    {info['verdict']}")
    for w in info["watchers"] or [None]:
        print("watcher:    " + (f"{w['addr']} ({w['node'] or 'unknown node'}) gid {w['gid']}" if w else "none"))
    if info["lock"]:
        for h in info["lock"]["holders"]:
            print(f"lock:       {h['entity']} {h['addr']} ({h['node'] or 'unknown node'}) tag "
                  f"{info['lock']['tag']!r} cookie {h['cookie']!r} {'live' if h['live'] else 'STALE'}")
    else:
        print("lock:       none")
    for entry in info["blocklisted"]:
        print(f"blocklist:  {entry}")


def node_is_fenced(guard: RbdGuard, node: str) -> str | None:
    """Why `node` counts as fenced: Pacemaker's history, or every IP blocklisted (fence_rbd)."""
    how = pacemaker_fenced(node)
    if how:
        return how
    ips = guard.node_map.ips_of(node)
    if ips and len(fenced_ips(guard.session, ips)) == len(ips):
        return f"all Ceph IPs of {node} blocklisted"
    return None


def run(args: argparse.Namespace) -> int:
    disk = RbdDisk.from_spec(args.image) if args.command in ("status", "release") else None
    node_map = NodeMap.parse(args.node_addrs) if args.node_addrs else NodeMap.from_cib()
    session = CephSession(args.conf, args.ceph_id, args.keyring, timeout=args.timeout)
    with RbdGuard(session, Policy.RECOVER, node_map=node_map) as guard:
        if args.command == "whoami":
            ips = own_ceph_ips(session)
            print(json.dumps({"ips": ips}) if args.json else " ".join(ips))
            return 0
        if args.command == "publish":
            node = args.node or subprocess.run(["crm_node", "-n"], capture_output=True, text=True,
                                               timeout=10).stdout.strip()
            if not node:
                raise RbdError("cannot tell this node's name: give --node")
            publish_node_addrs(node, own_ceph_ips(session))
            print(f"{node}: ravada-ceph-addrs = {' '.join(own_ceph_ips(session))}")
            return 0
        state = read_image_state(session, disk)
        if args.command == "status":
            concerned = {str(a.addr) for a in state.watchers} | {str(h.addr) for h in state.holders}
            ips = {ClientAddr.parse(a).ip for a in concerned}
            entries = [f"{e.addr} until {e.until}" for e in session.blocklist_ls()
                       if e.addr in concerned or (ClientAddr.parse(e.addr).nonce == 0
                                                  and ClientAddr.parse(e.addr).ip in ips)]
            info = describe(state, guard, entries)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print_status(info)
            return 0
        fenced: list[str] = []
        if args.force_after_fence:
            for watcher in state.watchers:
                node = node_map.node_of(watcher.addr)
                if node is None:
                    raise RbdError(f"watcher {watcher.addr} belongs to no known node: cannot confirm "
                                   f"it is fenced; not touching {disk.spec}")
                how = node_is_fenced(guard, node)
                if not how:
                    raise RbdError(f"{node} (watching {disk.spec} from {watcher.addr}) is not confirmed "
                                   f"fenced (no successful fencing in Pacemaker's history, not "
                                   f"blocklisted): not touching {disk.spec}")
                print(f"{node} is fenced: {how}", file=sys.stderr)
                fenced.append(node)
        result = guard.release(disk, dry_run=args.dry_run, fenced_nodes=fenced)
        if args.json:
            print(json.dumps({"allowed": result.allowed, "reason": result.reason, "actions": result.actions}))
        else:
            print(result.reason)
        if not result.allowed and state.watchers and not args.force_after_fence:
            print(f"{PROG}: a watcher means a live client; if its node is dead, fence it first "
                  f"(fence_rbd or power fencing), then use --force-after-fence", file=sys.stderr)
        return 0 if result.allowed else 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        return run(args)
    except BadDiskSpec as exc:
        print(f"{PROG}: {exc.reason}", file=sys.stderr)
        return 2
    except RbdError as exc:
        print(f"{PROG}: {exc.reason}", file=sys.stderr)
        return 1
