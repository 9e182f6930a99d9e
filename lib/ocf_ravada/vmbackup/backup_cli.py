"""ravada-backup: backups of a VM's RBD images as plain files (full, then incremental).

  ravada-backup export VM --to DIR      consistent snapshot, then DIR/VM/<snapshot>/: one
                                        export-diff stream per image, manifest.json last
  ravada-backup verify DIR              sizes and SHA-256 of a backup and the chain it builds on
  ravada-backup restore DIR --to POOL/NAME [--image POOL/IMAGE] [--force]
                                        rebuild an image from its full and incremental streams

One summary line on stdout; progress on a terminal.  Exit codes: 0 done, 1 failed or
refused (a partial, altered or truncated backup; a restore over an existing image), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..deadline import Deadline
from ..rbd import backup
from ..rbd.backup import RbdTool
from ..rbd.disks import RbdDisk
from ..rbd.errors import BadDiskSpec
from ..rbd.snapshot import Snapshots
from . import common
from .export import backup_vm
from .progress import Progress, human

PROG = "ravada-backup"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    common.add_ceph_options(parser)
    parser.add_argument("--json", action="store_true", help="the summary as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="back up a VM into DIR/VM/<snapshot>/")
    common.add_vm_options(export)
    export.add_argument("vm", metavar="VM")
    export.add_argument("--to", required=True, type=Path, metavar="DIR", help="backup directory")
    export.add_argument("--full", action="store_true", help="a full backup even when an incremental "
                                                            "one is possible")
    export.add_argument("--keep-snapshots", type=common.positive_int, metavar="N",
                        help="then delete all but the N newest ravada snapshots of the VM")
    export.add_argument("--timeout", type=common.seconds("--timeout", 3600), default=60.0,
                        help="deadline of the snapshot step (s); the guest is thawed within it")
    export.add_argument("--freeze-timeout", type=common.seconds("--freeze-timeout", 600), default=10.0,
                        help="give up (and thaw) when the guest has not frozen within this (s)")
    export.add_argument("--require-freeze", action="store_true",
                        help="refuse a crash-consistent backup (running guest without an agent)")
    verify = sub.add_parser("verify", help="check a backup and the chain it builds on")
    verify.add_argument("directory", type=Path, metavar="DIR")
    restore = sub.add_parser("restore", help="rebuild an image from a backup")
    restore.add_argument("directory", type=Path, metavar="DIR")
    restore.add_argument("--to", dest="target", required=True, metavar="POOL/NAME",
                         help="the new image")
    restore.add_argument("--image", metavar="POOL/IMAGE", help="which image of the backup (needed "
                                                              "when it has several)")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing image (never one that is open)")
    return parser.parse_args(argv)


def summary(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        return run_verify(args)
    tool = RbdTool(args.conf, args.ceph_id, args.keyring, args.ceph_timeout)
    if args.command == "restore":
        return run_restore(args, tool)
    deadline = Deadline(args.timeout)
    vm = common.open_vm(args, deadline)
    try:
        with common.open_session(args) as session:
            result = backup_vm(vm, session, tool, args.to, deadline, args.freeze_timeout,
                               require_freeze=args.require_freeze, full=args.full)
            for text in result.outcome.warnings:
                print(f"{PROG}: warning: {text}", file=sys.stderr)
            pruned = Snapshots(session).prune(vm.disks, args.keep_snapshots) if args.keep_snapshots else []
    finally:
        vm.close()
    rate = result.bytes / max(result.seconds, 1e-6)
    summary(args, {"vm": vm.name, "snapshot": result.manifest.snapshot, "kind": result.kind,
                   "consistency": result.outcome.consistency, "bytes": result.bytes,
                   "seconds": round(result.seconds, 3), "directory": str(result.directory),
                   "base": result.manifest.base, "pruned_snapshots": pruned},
            f"backup of {vm.name}: {result.kind}, {len(result.manifest.images)} image(s), "
            f"{human(result.bytes)} in {result.seconds:.1f}s ({human(rate)}/s), "
            f"{result.outcome.consistency}, {result.directory}")
    return common.EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    began = time.monotonic()
    chain = backup.verify(args.directory)
    total = sum(e.bytes for _, m in chain for e in m.images)
    newest = chain[-1][1]
    summary(args, {"directory": str(args.directory), "snapshot": newest.snapshot, "ok": True,
                   "chain": [p.name for p, _ in chain], "bytes": total},
            f"{args.directory}: OK, {newest.vm} at {newest.snapshot}, chain of {len(chain)} "
            f"backup(s), {human(total)} checked in {time.monotonic() - began:.1f}s")
    return common.EXIT_OK


def run_restore(args: argparse.Namespace, tool: RbdTool) -> int:
    target = RbdDisk.from_spec(args.target)
    if target.snapshot:
        raise BadDiskSpec(f"--to names an image, not a snapshot: {args.target!r}")
    began = time.monotonic()
    chain = backup.verify(args.directory)
    newest = chain[-1][1]
    if args.image:
        image = RbdDisk.from_spec(args.image).spec
    elif len(newest.images) == 1:
        image = newest.images[0].image
    else:
        raise BadDiskSpec(f"the backup holds {len(newest.images)} images "
                          f"({', '.join(e.image for e in newest.images)}): choose one with --image")
    plan = backup.restore_plan(chain, image)
    progress = Progress(f"restoring {target.spec}", sum(e.bytes for _, e in plan))
    with common.open_session(args) as session:
        try:
            applied = backup.restore(session, tool, plan, target, force=args.force, progress=progress)
        finally:
            progress.close()
    summary(args, {"image": image, "target": target.spec, "snapshot": newest.snapshot,
                   "streams": [str(p / e.file) for p, e in plan], "bytes": applied},
            f"restored {image} at {newest.snapshot} into {target.spec}: {len(plan)} stream(s), "
            f"{human(applied)} in {time.monotonic() - began:.1f}s")
    return common.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return common.run_command(PROG, parse_args, run, argv)
