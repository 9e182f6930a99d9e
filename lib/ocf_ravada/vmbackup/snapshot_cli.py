"""ravada-snapshot: consistent snapshots of a VM's RBD images (guest frozen through its agent).

  ravada-snapshot create VM [--keep N]   freeze, snapshot every image as ravada-<UTC time>, thaw
  ravada-snapshot list VM                our snapshots of the VM's images
  ravada-snapshot delete VM NAME         remove one of them from every image
  ravada-snapshot thaw VM                thaw a guest left frozen (by an interrupted run)

The VM is found where Pacemaker runs it (or at --uri).  Without a guest agent the snapshot is
crash-consistent, and says so.  Exit codes: 0 done, 1 refused or failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..deadline import Deadline
from ..rbd.snapshot import Snapshots, snapshot_name
from ..virt.guestagent import Agent, GuestAgent
from . import common
from .consistent import snapshot_vm, thaw_if_frozen

PROG = "ravada-snapshot"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    common.add_ceph_options(parser)
    common.add_vm_options(parser)
    parser.add_argument("--timeout", type=common.seconds("--timeout", 3600), default=60.0,
                        help="the whole command's deadline (s); the guest is thawed within it")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="freeze, snapshot every image, thaw")
    create.add_argument("vm", metavar="VM")
    create.add_argument("--keep", type=common.positive_int, help="then delete all but the N newest")
    create.add_argument("--freeze-timeout", type=common.seconds("--freeze-timeout", 600), default=10.0,
                        help="give up (and thaw) when the guest has not frozen within this (s)")
    create.add_argument("--require-freeze", action="store_true",
                        help="refuse a crash-consistent snapshot (running guest without an agent)")
    listing = sub.add_parser("list", help="our snapshots of the VM's images")
    listing.add_argument("vm", metavar="VM")
    delete = sub.add_parser("delete", help="remove one snapshot from every image")
    delete.add_argument("vm", metavar="VM")
    delete.add_argument("name", metavar="NAME")
    thaw = sub.add_parser("thaw", help="thaw a guest left frozen")
    thaw.add_argument("vm", metavar="VM")
    return parser.parse_args(argv)


def warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    deadline = Deadline(args.timeout)
    vm = common.open_vm(args, deadline)
    try:
        if args.command == "thaw":
            return thaw(vm, deadline)
        with common.open_session(args) as session:
            snapshots = Snapshots(session)
            if args.command == "create":
                outcome = snapshot_vm(vm, snapshots, snapshot_name(), deadline,
                                      freeze_limit=args.freeze_timeout, require_freeze=args.require_freeze)
                for text in outcome.warnings:
                    warn(text)
                pruned = snapshots.prune(vm.disks, args.keep) if args.keep else []
                if args.json:
                    print(json.dumps({"snapshot": outcome.name, "consistency": outcome.consistency,
                                      "frozen_seconds": round(outcome.frozen_seconds, 3),
                                      "images": [d.spec for d in vm.disks], "pruned": pruned,
                                      "warnings": outcome.warnings}))
                else:
                    frozen = f" for {outcome.frozen_seconds:.2f}s" if outcome.frozen_seconds else ""
                    print(f"{outcome.name}: {len(vm.disks)} image(s) of {vm.name}, "
                          f"{outcome.consistency}{frozen}"
                          + (f"; deleted {', '.join(pruned)}" if pruned else ""))
                return common.EXIT_OK
            if args.command == "list":
                sets = snapshots.list(vm.disks)
                if args.json:
                    print(json.dumps([{"name": s.name, "taken": s.taken.isoformat(),
                                       "complete": s.complete(vm.disks), "images": s.images}
                                      for s in sets], indent=2))
                for s in [] if args.json else sets:
                    missing = [d.spec for d in vm.disks if d.spec not in s.images]
                    print(f"{s.name}  {s.taken:%Y-%m-%d %H:%M:%S}Z  {len(s.images)} image(s)"
                          + (f"  INCOMPLETE (missing {', '.join(missing)})" if missing else ""))
                return common.EXIT_OK
            removed = snapshots.delete(vm.disks, args.name)
            if not removed:
                print(f"{PROG}: no snapshot {args.name} on the images of {vm.name}", file=sys.stderr)
                return common.EXIT_FAILED
            print(f"deleted {args.name} from {', '.join(removed)}")
            return common.EXIT_OK
    finally:
        vm.close()


def thaw(vm, deadline: Deadline) -> int:
    if not vm.running:
        print(f"{vm.name} is not running: nothing to thaw")
        return common.EXIT_OK
    agent = GuestAgent(vm.hv, vm.domain)
    state = agent.state()
    if state is not Agent.CONNECTED:
        print(f"{vm.name}: {state.value}: nothing to thaw")
        return common.EXIT_OK
    print(f"{vm.name}: {'was frozen, thawed' if thaw_if_frozen(agent, deadline) else 'not frozen'}")
    return common.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return common.run_command(PROG, parse_args, run, argv)
