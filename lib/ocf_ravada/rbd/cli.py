"""ravada-rbd: look at and safely release the locks of RBD images used by VMs.

  ravada-rbd status POOL/IMAGE          who has it open (with node names), lock owner, owner
                                        record, fences
  ravada-rbd release POOL/IMAGE         fence + break a stale lock, clear the owner record
                                        (same rules as the agent)
             [--dry-run] [--force-after-fence]
  ravada-rbd whoami                     this node's Ceph client IP(s), as the cluster sees them
  ravada-rbd publish [--node NODE]      store them in the node attribute ravada-ceph-addrs

Exit codes: 0 done (status: reported), 1 refused or failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..deadline import parse_seconds
from .addresses import ClientAddr
from .cluster import CephSession
from .disks import RbdDisk
from .errors import BadDiskSpec, RbdError
from . import owner
from .guard import Policy, RbdGuard
from .image_state import ImageState, read_image_state
from .nodes import NodeMap, local_node_name, own_ceph_ips, publish_node_addrs
from .owner import OwnerRecord

PROG = "ravada-rbd"


def _timeout(text: str) -> float:
    """--timeout: finite seconds (inf and nan would wait forever or crash librados)."""
    try:
        return parse_seconds(text, "--timeout", 3600)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="/etc/ceph/ceph.conf", help="Ceph configuration file")
    parser.add_argument("--id", dest="ceph_id", default="admin", help="cephx user without 'client.'")
    parser.add_argument("--keyring", help="keyring of --id (default: from the Ceph config)")
    parser.add_argument("--node-addrs", help="node:IP[,IP];node:IP (default: CIB attribute ravada-ceph-addrs)")
    parser.add_argument("--timeout", type=_timeout, default=20.0, help="give up when Ceph does not answer (s)")
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


def describe(state: ImageState, record: OwnerRecord, guard: RbdGuard, blocklisted: list[str]) -> dict:
    def who(addr: ClientAddr) -> dict:
        return {"addr": str(addr), "node": guard.node_map.node_of(addr)}
    if state.foreign_lock:
        verdict = "foreign advisory lock"
    elif state.watchers:
        verdict = "in use"
    elif state.holders:
        verdict = "stale lock (owner has no watch): 'release' fences and breaks it"
    elif not record.empty:
        verdict = "not open, but an owner is recorded: a start elsewhere fences it first"
    else:
        verdict = "free"
    return {
        "image": state.disk.spec,
        "watchers": [{**who(w.addr), "gid": w.gid, "cookie": w.cookie} for w in state.watchers],
        "lock": None if not state.holders else {
            "tag": state.lock_tag,
            "holders": [{**who(h.addr), "entity": h.entity, "cookie": h.cookie,
                         "live": state.is_watched_by(h.addr)} for h in state.holders]},
        "owner_record": None if record.empty else {
            "epoch": record.epoch, "since": record.since, "description": record.describe(),
            "owner": record.owner.to_json() if record.owner else None,
            "incoming": record.incoming.to_json() if record.incoming else None},
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
    record = info["owner_record"]
    print(f"owner:      {record['description'] if record else 'none recorded'}")
    for entry in info["blocklisted"]:
        print(f"blocklist:  {entry}")


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
            node = args.node or local_node_name()
            if not node:
                raise RbdError("cannot tell this node's name: give --node")
            publish_node_addrs(node, own_ceph_ips(session))
            print(f"{node}: ravada-ceph-addrs = {' '.join(own_ceph_ips(session))}")
            return 0
        state = read_image_state(session, disk)
        if args.command == "status":
            record = owner.load(session, disk)
            concerned = ({str(a.addr) for a in state.watchers} | {str(h.addr) for h in state.holders}
                         | {a for p in record.parties for a in p.addrs})
            ips = {ClientAddr.parse(a).ip for a in concerned}
            entries = [f"{e.addr} until {e.until}" for e in session.blocklist_ls()
                       if e.addr in concerned or (ClientAddr.parse(e.addr).nonce == 0
                                                  and ClientAddr.parse(e.addr).ip in ips)]
            info = describe(state, record, guard, entries)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print_status(info)
            return 0
        fenced: list[str] = []
        if args.force_after_fence:
            record = owner.load(session, disk)
            concerned = [(node_map.node_of(w.addr), f"watching {disk.spec} from {w.addr}") for w in state.watchers]
            concerned += [(p.node, f"recorded as starting {disk.spec}") for p in record.parties if p.pending]
            for node, what in concerned:
                if node is None:
                    raise RbdError(f"a client {what.split(' from ')[-1]} belongs to no known node: cannot "
                                   f"confirm it is fenced; not touching {disk.spec}")
                how = guard.node_fenced(node)
                if not how:
                    raise RbdError(f"{node} ({what}) is not confirmed fenced (no successful fencing in "
                                   f"Pacemaker's history, not blocklisted): not touching {disk.spec}")
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
