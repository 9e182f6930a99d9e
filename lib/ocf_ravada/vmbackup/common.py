"""What ravada-snapshot and ravada-backup share: Ceph and libvirt options, finding the VM,
signals that unwind (so every `finally` runs) and one-line errors with exit codes."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from ..cliargs import seconds
from ..deadline import Deadline
from ..rbd.cluster import CephSession
from ..rbd.errors import BadDiskSpec, RbdError
from ..virt.connection import VirtError
from .locate import DEFAULT_URI_TEMPLATE, Vm, find_vm

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C so cleanups (the thaw) run."""


def positive_int(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 100000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100000, got {text!r}")
    return int(text)


def add_ceph_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default="/etc/ceph/ceph.conf", help="Ceph configuration file")
    parser.add_argument("--id", dest="ceph_id", default="admin", help="cephx user without 'client.'")
    parser.add_argument("--keyring", help="keyring of --id (default: from the Ceph config)")
    parser.add_argument("--ceph-timeout", type=seconds("--ceph-timeout", 300), default=10.0,
                        help="longest wait for one Ceph operation (s)")


def add_vm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", help="libvirt URI of the VM's host (default: ask Pacemaker where "
                                      "the VM runs)")
    parser.add_argument("--resource", help="Pacemaker resource of the VM (default: the VM name)")
    parser.add_argument("--uri-template", default=DEFAULT_URI_TEMPLATE,
                        help="libvirt URI of a remote node, {node} replaced by its name")
    parser.add_argument("--disk", action="append", metavar="POOL/IMAGE",
                        help="the VM's image (repeat for each; default: its RBD disks from libvirt)")


def open_session(args: argparse.Namespace) -> CephSession:
    return CephSession(args.conf, args.ceph_id, args.keyring, timeout=args.ceph_timeout)


def open_vm(args: argparse.Namespace, deadline: Deadline) -> Vm:
    return find_vm(args.vm, deadline, uri=args.uri, resource=args.resource,
                   uri_template=args.uri_template, disk_specs=args.disk)


def _unwind(signum: int, _frame) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def run_command(prog: str, parse: Callable[[list[str]], argparse.Namespace],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _unwind)
    try:
        return run(args)
    except BadDiskSpec as exc:
        print(f"{prog}: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except (RbdError, VirtError) as exc:
        print(f"{prog}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"{prog}: {exc or 'interrupted'}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{prog}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED
