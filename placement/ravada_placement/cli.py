"""ravada-place: plan VM placement for Pacemaker and emit, simulate or apply it.

Exit status: 0 done; 1 bad input; 2 usage error; 3 the plan is incomplete (some VM has no
node: nothing is applied); 4 Pacemaker refused or failed, or the configuration kept changing
under --apply (nothing is applied).  Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lxml import etree
from ocf_ravada.cliargs import Parser, UsageError
from ocf_ravada.pacemaker import node_kinds, with_utilization

from . import cib as cibmod
from . import cibgen
from . import constraints, render, sizes
from .jsonin import load_json
from .model import SCORE_INFINITY, Cluster, InputError
from .pacemaker import PacemakerError, apply, simulate, verify, write_cib
from .plan import Plan, plan_drain, plan_place, plan_rebalance
from .policies import POLICIES, make_policy
from .state import Limits

EXIT_INPUT, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_PACEMAKER = 1, 2, 3, 4
# --apply plans again when the configuration changed meanwhile, this many times at most.
APPLY_ATTEMPTS = 3


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"ratio must be > 0 and <= 100, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    source = common.add_mutually_exclusive_group()
    source.add_argument("--cib", metavar="FILE", help="a saved CIB (cibadmin --query) instead of the live cluster")
    source.add_argument("--json", metavar="FILE", help="a JSON cluster description (planning only)")
    common.add_argument("--policy", choices=sorted(POLICIES), default="balanced",
                        help="node choice: balanced (default), pack, or ravada (Ravada's own rule)")
    common.add_argument("--same-user", action="store_true", help="keep one user's VMs on the same node")
    common.add_argument("--cpu-ratio", type=_ratio, default=1.0, metavar="R",
                        help="vCPU overcommit: a node takes vCPUs up to cpu x R (default 1.0)")
    common.add_argument("--memory-ratio", type=_ratio, default=1.0, metavar="R",
                        help="memory overcommit: up to hv_memory x R (default 1.0)")
    common.add_argument("--cpu-weight", type=float, default=1.0, metavar="W",
                        help="balanced/rebalance: weight of cpu spread (default 1.0)")
    common.add_argument("--memory-weight", type=float, default=1.0, metavar="W",
                        help="balanced/rebalance: weight of memory spread (default 1.0)")
    common.add_argument("--score", default="1000",
                        help="location score of a placement, or INFINITY for mandatory (default 1000)")
    common.add_argument("--format", choices=("text", "xml", "pcs", "crm", "json"), default="text",
                        help="output: plan as text, CIB constraints, pcs or crm commands, or JSON")
    common.add_argument("--explain", action="store_true", help="show every node's score or exclusion per VM")
    common.add_argument("--simulate", action="store_true",
                        help="run Pacemaker's crm_simulate with the constraints and show where it puts each VM")
    common.add_argument("--write-cib", metavar="FILE", help="write the CIB with the constraints applied")
    common.add_argument("--apply", action="store_true", help="apply the constraints to the live CIB (one atomic change)")

    parser = Parser(prog="ravada-place",
                                     description="Place libvirt VMs on Pacemaker nodes by vCPU, memory, user and base.",
                                     epilog="Options go after the command: ravada-place place --explain vm1")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    place = commands.add_parser("place", parents=[common], help="place new or stopped VMs (all, or those named)")
    place.add_argument("vms", nargs="*", metavar="VM")
    drain = commands.add_parser("drain", parents=[common], help="move every VM off NODE")
    drain.add_argument("node", metavar="NODE")
    rebalance = commands.add_parser("rebalance", parents=[common],
                                    help="the migrations that improve the policy's measure most")
    rebalance.add_argument("--max-moves", type=int, default=5, metavar="K", help="at most K migrations (default 5)")
    rebalance.add_argument("--min-gain", type=float, default=0.01, metavar="G",
                           help="stop when a move improves the policy's measure by less than G (default 0.01)")
    clear = commands.add_parser("clear", parents=[common], help="remove ravada-place constraints (all, or of the VMs named)")
    clear.add_argument("vms", nargs="*", metavar="VM")
    return parser


def make_plan(args: argparse.Namespace, cluster: Cluster, score: str) -> Plan:
    limits = Limits(cpu_ratio=args.cpu_ratio, memory_ratio=args.memory_ratio)
    weights = (args.cpu_weight, args.memory_weight)
    if args.command == "rebalance":
        value = SCORE_INFINITY if score == constraints.INFINITY else int(score)
        return plan_rebalance(cluster, limits, args.max_moves, args.min_gain, args.same_user, weights,
                              make_policy(args.policy, False, weights), value)
    policy = make_policy(args.policy, args.same_user, weights)
    if args.command == "drain":
        return plan_drain(cluster, policy, limits, args.node, args.explain)
    return plan_place(cluster, policy, limits, args.vms, args.explain)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"ravada-place: usage: {err} (see ravada-place --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args)
    except InputError as err:
        print(f"ravada-place: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_INPUT
    except PacemakerError as err:
        print(f"ravada-place: pacemaker: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_PACEMAKER


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_options(args: argparse.Namespace) -> None:
    for name in ("cpu_weight", "memory_weight", "min_gain"):
        value = getattr(args, name, 0.0)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, not {value}")
    if args.cpu_weight + args.memory_weight == 0:
        raise InputError("--cpu-weight and --memory-weight must be >= 0 and not both 0")
    if args.json and (args.apply or args.command == "clear"):
        raise InputError("--apply and clear need a cluster, not --json")
    if args.apply and args.cib:
        raise InputError("--apply works on the live cluster; it cannot be combined with --cib")


def _read(args: argparse.Namespace) -> tuple[etree._Element | None, Cluster, bool]:
    if args.json:
        cluster = load_json(args.json)
        # Simulating a JSON plan needs a CIB: Dummy resources with the same utilization.
        cib = cibgen.live_like_cib(cluster) if args.simulate or args.write_cib else None
        return cib, cluster, True
    return cibmod.read_cluster(args.cib)


def _plan(args: argparse.Namespace, cluster: Cluster, cib: etree._Element | None,
          score: str) -> tuple[Plan, list[constraints.Location], list[str], set[str] | None]:
    if args.command == "clear":
        units = {name: cluster.unit_of(name) for name in args.vms}
        unknown = sorted(name for name, unit in units.items() if unit is None)
        if unknown:
            raise InputError(f"unknown VM(s): {', '.join(unknown)}")
        plan, new = Plan("clear"), []
        replace_for = {rsc for unit in units.values() for rsc in cluster.vms[unit].resources} or None
    else:
        plan = make_plan(args, cluster, score)
        new = constraints.locations(plan, score)
        replace_for = {rsc for move in plan.moves for rsc in plan.resources.get(move.vm, (move.vm,))}
    keep_bans = args.command != "clear"
    removed = ([el.get("id") for el in constraints.replaced(cib, new, replace_for, keep_bans)]
               if cib is not None else [])
    return plan, new, removed, replace_for


def _run(args: argparse.Namespace) -> int:
    score = constraints.parse_score(args.score)
    _check_options(args)
    keep_bans = args.command != "clear"
    added_sizes: dict[str, dict[str, str]] = {}
    for _attempt in range(APPLY_ATTEMPTS if args.apply else 1):
        cib, cluster, with_status = _read(args)
        plan, new, removed, replace_for = _plan(args, cluster, cib, score)
        if cib is None or not plan.complete:
            break
        new_cib = constraints.with_locations(cib, new, replace_for, keep_bans)
        added_sizes = sizes.missing_sizes(cib, replace_for or set()) if args.command != "clear" else {}
        if added_sizes:
            new_cib = with_utilization(new_cib, added_sizes)
        if not args.apply:
            break
        valid_before, _ = verify(cib)
        valid_after, messages = verify(new_cib)
        if valid_before and not valid_after:
            raise PacemakerError(f"crm_verify rejects the new configuration; nothing applied: {messages}")
        # Apply only what was planned from the configuration that is live now: a change made
        # meanwhile (admin_epoch/epoch moved) may invalidate the plan, so it is made again.
        now = cibmod.version(cibmod.load_cib(None))
        if now == cibmod.version(cib):
            apply(cib, new_cib)
            break
        print(f"ravada-place: the CIB configuration changed while planning (admin_epoch:epoch "
              f"{':'.join(cibmod.version(cib))} -> {':'.join(now)}); planning again", file=sys.stderr)
    else:
        raise PacemakerError(f"the CIB configuration changed during each of {APPLY_ATTEMPTS} attempts to plan; "
                             "nothing applied (try again when it is quiet)")

    if args.explain and plan.explanations:
        print(render.explain(plan))
    print({"text": lambda: render.text(plan) if plan.kind != "clear" else render.removals(removed),
           "xml": lambda: render.xml(new),
           "pcs": lambda: render.pcs(new, removed),
           "crm": lambda: render.crm(new, removed),
           "json": lambda: render.as_json(plan, new)}[args.format]())
    if not plan.complete:
        print(f"ravada-place: {len(plan.failures)} VM(s) left out (no possible node or no room); nothing applied",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    if cib is None:
        return 0
    if args.write_cib:
        _write_output(new_cib, Path(args.write_cib))
    if args.simulate:
        _show_simulation(plan, cluster, new_cib, with_status)
    if args.apply:
        print(f"applied: {len(new)} constraint(s) written, {len(removed)} replaced"
              + (f", utilization of {len(added_sizes)} VM(s) added" if added_sizes else ""))
    return 0


def _write_output(cib: etree._Element, path: Path) -> None:
    """--write-cib: a regular file (a FIFO would block us until someone reads it)."""
    if path.exists() and not path.is_file():
        raise InputError(f"cannot write {path}: not a regular file")
    try:
        write_cib(cib, path)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from None


def _show_simulation(plan: Plan, cluster: Cluster, new_cib, with_status: bool) -> None:
    # Remote nodes come up when the simulation starts their connections: --node-up on one
    # without a <node> element makes crm_simulate take it for a cluster node, and plan nothing.
    kinds = node_kinds(new_cib)
    nodes_up = [] if with_status else [n for n in cluster.nodes if kinds.get(n) == "cluster"]
    where = simulate(new_cib, nodes_up)
    def primitives(rsc: str) -> list[str]:
        """A group's members (the graph names primitives), else the resource itself."""
        group = new_cib.find(f"configuration/resources/group[@id='{rsc}']") if "'" not in rsc else None
        return [p.get("id") for p in group.iterfind("primitive")] if group is not None else [rsc]

    planned = {primitive: move.target for move in plan.moves
               for rsc in plan.resources.get(move.vm, (move.vm,)) for primitive in primitives(rsc)}
    print("simulation (crm_simulate):")
    for rsc in [p for vm in cluster.vms.values() for rsc in vm.resources for p in primitives(rsc)]:
        actual = where.get(rsc)
        note = ""
        if rsc in planned:
            note = "  as planned" if actual == planned[rsc] else f"  (planned {planned[rsc]})"
        print(f"  {rsc:<24} {actual or 'Stopped'}{note}")
