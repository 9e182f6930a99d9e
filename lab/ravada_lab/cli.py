"""`ravada-lab`: bring up, inspect, break and remove a multi-node Pacemaker + libvirt lab."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import lifecycle, shaping, tour
from .cluster import observe
from .errors import LabError
from .layout import DEFAULT_NAME, DEFAULT_ROOT, LabLayout, check_node_count, check_remote_count
from .node import EXEC_TIMEOUT, NODE_ENV, enter_command
from .protocol import request
from .state import LabState

EXIT_NOT_UP = 3

# command -> (controller operation, what it does, past tense for the report)
NODE_COMMANDS = {
    "kill": ("off", "power cut: every process of the node dies at once", "killed"),
    "on": ("on", "power a killed node back on (starts its daemons)", "powered on"),
    "freeze": ("freeze", "SIGSTOP every process of the node (a hung node)", "frozen"),
    "thaw": ("thaw", "SIGCONT every process of the node", "thawed"),
    "cut": ("cut", "unplug the node from the lab network (partition)", "cut off"),
    "heal": ("heal", "plug the node back in", "reconnected"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=argparse.SUPPRESS,
                        help=f"lab name (default $RAVADA_LAB or {DEFAULT_NAME})")
    common.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                        help=f"where labs keep their state (default {DEFAULT_ROOT})")
    parser = argparse.ArgumentParser(prog="ravada-lab", parents=[common], description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", parents=[common], help="start a lab and wait for its cluster")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--ceph", action="store_true",
                    help="also a throw-away Ceph (1 mon, 1 OSD) on the lab switch, and fence_rbd "
                    "with the power fence device in every node's fencing level 1")
    up.add_argument("--remote-nodes", type=int, default=0, metavar="N",
                    help="also N pacemaker_remote nodes remote1..N (pacemaker-remoted, libvirtd; "
                    "no corosync), connected by ocf:pacemaker:remote resources")
    up.add_argument("--link-rate", metavar="RATE",
                    help="limit every node's link to RATE each way (tc syntax: 200mbit, 1gbit)")
    shape = sub.add_parser("shape", parents=[common], help="limit every node's link (egress "
                           "and ingress) to a rate, or remove the limit")
    how = shape.add_mutually_exclusive_group(required=True)
    how.add_argument("--rate", metavar="RATE", help="tc syntax: 200mbit, 1gbit, 50mbps")
    how.add_argument("--off", action="store_true", help="no limit")
    sub.add_parser("down", parents=[common], help="stop and remove everything of the lab")
    sub.add_parser("status", parents=[common], help="nodes, daemons and cluster summary")
    ex = sub.add_parser("exec", parents=[common], help="run a command inside a node "
                        "(options of ravada-lab go before NODE)")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ssh = sub.add_parser("ssh", parents=[common], help="the lab's stand-in for ssh: run a command "
                         "inside a node through the lab controller, from the host or from another "
                         "node (e.g. RAVADA_NODE_SHELL='ravada-lab ssh {node}')")
    ssh.add_argument("node")
    ssh.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD ...")
    tour = sub.add_parser("tour", parents=[common], help="a guided tour of the lab of "
                          "`make demo`: migration, power cut and fencing, placement (and RBD "
                          "safety with --ceph), pausing between steps")
    tour.add_argument("--no-pause", action="store_true", help="run every step without waiting "
                      "for Enter")
    tour.add_argument("--print", action="store_true", help="only print the steps' commands")
    for command, (_op, doc, _done) in NODE_COMMANDS.items():
        sub.add_parser(command, parents=[common], help=doc).add_argument("node")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lab = LabLayout.for_lab(getattr(args, "name", os.environ.get("RAVADA_LAB", DEFAULT_NAME)),
                                getattr(args, "root", DEFAULT_ROOT))
        return _dispatch(args, lab)
    except LabError as e:
        print(f"ravada-lab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ravada-lab: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, lab: LabLayout) -> int:
    if args.command == "up":
        lifecycle.up(lab, check_node_count(args.nodes), ceph=args.ceph, link_rate=args.link_rate,
                     remote_count=check_remote_count(args.remote_nodes))
        print(_status_text(lab))
        return 0
    if args.command == "down":
        if not lifecycle.down(lab):
            print(f"ravada-lab: lab {lab.name!r} is not up; nothing to remove", file=sys.stderr)
        else:
            print(f"lab {lab.name!r} removed")
        return 0
    if args.command == "status":
        if not lab.state_file.exists():
            print(f"ravada-lab: lab {lab.name!r} is not up", file=sys.stderr)
            return EXIT_NOT_UP
        print(_status_text(lab))
        return 0
    if args.command == "shape":
        rate = None if args.off else args.rate
        if rate is not None:
            shaping.parse_rate(rate)
        request(lab.control_socket, "shape", rate=rate)
        print(f"every link limited to {rate} each way" if rate else "links unshaped")
        return 0
    if args.command == "exec":
        return _exec(lab, args.node, args.argv)
    if args.command == "ssh":
        return _ssh(lab, args.node, args.argv)
    if args.command == "tour":
        state = LabState.load(lab)
        steps = tour.build(state)
        if args.print:
            print(tour.render(steps))
        else:
            tour.run(state, steps, pause=not args.no_pause)
        return 0
    op, _doc, done = NODE_COMMANDS[args.command]
    request(lab.control_socket, op, node=args.node, client="ravada-lab")
    print(f"{args.node} {done}")
    return 0


def _exec(lab: LabLayout, node: str, argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    holder = LabState.load(lab).holder(node)
    env = dict(NODE_ENV, TERM=os.environ.get("TERM", "dumb"))
    command = enter_command(holder) + (argv or ["/bin/bash", "-l"])
    os.execvpe(command[0], command, env)


def _ssh(lab: LabLayout, node: str, argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("ssh needs a command to run in the node")
    done = request(lab.control_socket, "exec", node=node, argv=argv, timeout=EXEC_TIMEOUT + 10,
                   client="ravada-lab ssh")
    sys.stdout.write(done["stdout"])
    sys.stderr.write(done["stderr"])
    return done["returncode"]


def _status_text(lab: LabLayout) -> str:
    state = LabState.load(lab)
    lines = [f"lab {lab.name!r}: {lab.root}  (shared dir {lab.shared_dir})",
             f"  links: {state.data.get('link_rate') or 'unshaped'}; ssh key {lab.ssh_key}, "
             f"known hosts {lab.known_hosts}"]
    for name, info in state.data["nodes"].items():
        flags = [f for f in ("frozen", "cut") if info.get(f)]
        daemons = " ".join(f"{d}:{p}" for d, p in sorted(info.get("daemons", {}).items()))
        lines.append(f"  {name:7} {info['address']:12} power {info['power']:3} "
                     f"{' '.join(flags):11} {daemons}")
    for event in state.data.get("power_log", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        error = f": {event['error']}" if event.get("error") else ""
        lines.append(f"  power: {when} {event['node']} {event['op']} by {event['client']}{error}")
    try:
        view = observe(state)
        lines.append(f"  cluster: DC {view.dc or 'none'}, online {', '.join(sorted(view.online))}")
        for rsc, nodes in sorted(view.resources.items()):
            lines.append(f"    {rsc:14} {view.roles.get(rsc, ''):9} {', '.join(nodes)}")
    except LabError as e:
        lines.append(f"  cluster: unknown ({e})")
    return "\n".join(lines)
