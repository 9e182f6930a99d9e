"""ravada-node: take a node out of the cluster and bring it back.

Exit status: 0 done; 1 error (Pacemaker or the node failed; the reason on stderr);
2 usage error; 3 refused (a VM would have nowhere to go: --force) or incomplete (some VM
did not move, or the node did not come back, in time).
"""
from __future__ import annotations

import argparse
import sys

from . import nodeops, pacemaker
from .cliargs import Parser, UsageError, seconds
from .deadline import Deadline
from .nodeshell import NodeCommandError, NodeShell

EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ravada-node",
                     description="Drain a node by live migration (ravada-place's plan), undrain it, "
                                 "shut it down, or wake it with Wake-on-LAN.",
                     epilog="Commands on other nodes go through $RAVADA_NODE_SHELL (default: ssh "
                            "-o BatchMode=yes -o ConnectTimeout=10 {node}); power-off through "
                            "$RAVADA_NODE_POWEROFF when set.  wake needs node attribute ravada-mac.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, text in (("drain", "live-migrate every VM off NODE and keep them off"),
                       ("undrain", "let VMs run on NODE again"),
                       ("shutdown", "drain NODE, stop its cluster stack, power it off"),
                       ("wake", "send NODE a Wake-on-LAN packet and wait until it rejoins")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("node", metavar="NODE")
        sub.add_argument("--timeout", type=seconds("--timeout"), default=600.0, metavar="SECONDS",
                         help="give up after this long (default 600)")
        if name in ("drain", "shutdown"):
            sub.add_argument("--force", action="store_true",
                             help="also when some VM has nowhere to go (it is stopped)")
            sub.add_argument("--policy", choices=("balanced", "pack", "ravada"), default="balanced",
                             help="ravada-place's node choice (default balanced)")
        if name == "drain":
            sub.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
        if name == "wake":
            sub.add_argument("--broadcast", default="255.255.255.255", metavar="ADDRESS",
                             help="where to send the packet (default 255.255.255.255)")
            sub.add_argument("--no-wait", action="store_true", help="send the packet and return")
    return parser


def _log(line: str) -> None:
    print(f"ravada-node: {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"ravada-node: usage: {err} (see ravada-node --help)", file=sys.stderr)
        return EXIT_USAGE
    deadline = Deadline(args.timeout)
    try:
        return _run(args, deadline)
    except nodeops.Refused as err:
        print(f"ravada-node: refused: {err}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except (nodeops.OpsError, NodeCommandError) as err:
        print(f"ravada-node: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except pacemaker.PacemakerError as err:
        print(f"ravada-node: pacemaker: {err.reason}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace, deadline: Deadline) -> int:
    if args.command == "drain":
        report = nodeops.drain(args.node, deadline, force=args.force, policy=args.policy, log=_log,
                               dry_run=args.dry_run)
        if not args.dry_run:
            for line in report.lines():
                _log(line)
        return 0 if report.complete else EXIT_INCOMPLETE
    if args.command == "undrain":
        cleared = nodeops.undrain(args.node, deadline, log=_log)
        _log(f"{args.node} undrained ({len(cleared)} ban(s) removed)")
        return 0
    if args.command == "shutdown":
        shell = NodeShell.from_environment(pacemaker.local_node_name(deadline))
        nodeops.shutdown(args.node, deadline, shell, force=args.force, log=_log)
        return 0
    came_back = nodeops.wake(args.node, deadline, args.broadcast, log=_log, wait=not args.no_wait)
    if not came_back:
        print(f"ravada-node: {args.node} did not rejoin within {args.timeout:.0f}s", file=sys.stderr)
        return EXIT_INCOMPLETE
    _log(f"{args.node} is online" if not args.no_wait else "packet sent")
    return 0
