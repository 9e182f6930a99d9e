"""ravada-cluster: whole-cluster emergency shutdown (e.g. NUT's SHUTDOWNCMD) and resume.

Exit status: 0 done (or another invocation does it); 1 error; 2 usage error; 3 some VM was
still running at the deadline (the stack was stopped anyway).
"""
from __future__ import annotations

import argparse
import sys

from . import emergency, pacemaker
from .cliargs import Parser, UsageError, seconds
from .deadline import Deadline
from .nodeshell import NodeShell

EXIT_ERROR, EXIT_USAGE, EXIT_LATE = 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ravada-cluster",
                     description="Stop every VM of the cluster in priority order within a deadline, "
                                 "then the cluster stack (a UPS on low battery); resume afterwards.",
                     epilog="Safe to run on several nodes at once: one invocation does the work, the "
                            "others wait for it.  Commands on other nodes go through $RAVADA_NODE_SHELL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    stop = commands.add_parser("emergency-shutdown", help="stop all VMs, then the stack on every node")
    stop.add_argument("--deadline", type=seconds("--deadline", minimum=10), default=300.0, metavar="SECONDS",
                      help="everything done within this long (default 300)")
    stop.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    stop.add_argument("--poweroff", action="store_true", help="power the nodes off at the end")
    resume = commands.add_parser("resume", help="undo an emergency shutdown once the cluster runs again")
    resume.add_argument("--force", action="store_true", help="even while an emergency shutdown seems to run")
    resume.add_argument("--timeout", type=seconds("--timeout", minimum=10), default=120.0, metavar="SECONDS",
                        help="limit for Pacemaker's tools (default 120)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"ravada-cluster: usage: {err} (see ravada-cluster --help)", file=sys.stderr)
        return EXIT_USAGE
    journal = emergency.Journal(lambda line: print(f"ravada-cluster: {line}", file=sys.stderr, flush=True))
    try:
        if args.command == "resume":
            emergency.resume(Deadline(args.timeout), journal, force=args.force)
            return 0
        if args.dry_run:
            job = emergency.EmergencyShutdown(args.deadline, None, journal, poweroff=args.poweroff)
            for line in job.describe():
                print(line)
            return 0
        deadline = Deadline(args.deadline)
        shell = NodeShell.from_environment(pacemaker.local_node_name(deadline))
        job = emergency.EmergencyShutdown(args.deadline, shell, journal, poweroff=args.poweroff)
        return 0 if job.run() else EXIT_LATE
    except emergency.EmergencyError as err:
        print(f"ravada-cluster: refused: {err}", file=sys.stderr)
        return EXIT_ERROR
    except pacemaker.PacemakerError as err:
        journal(f"pacemaker: {err.reason}")
        return EXIT_ERROR
