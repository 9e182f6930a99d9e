"""The failover benchmark behind bench/failover (see its docstring for the phases)."""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import datetime

from . import lifecycle
from .cluster import wait_until
from .errors import LabError
from .layout import LabLayout
from .protocol import request
from .state import LabState, node_run
from .vms import AGENT, create_vm

ANCHOR = "ocf:heartbeat:VirtualDomain"
PHASES = ("detection", "decision", "fencing", "recovery", "start", "total")
SETTLE_TIMEOUT = 120.0


def _markers(victim: str, vm: str) -> dict[str, re.Pattern]:
    return {
        "lost": re.compile(rf"Node {victim} state is now lost"),
        "fence_requested": re.compile(rf"Requesting peer fencing \(\w+\) targeting {victim}\b"),
        "fenced": re.compile(rf"Operation '\w+' targeting {victim} by \S+ for \S+: OK"),
        "start_requested": re.compile(rf"Requesting local execution of start operation for {vm} "),
        "started": re.compile(rf"Result of start operation for {vm} on \S+: ok"),
    }


def _log_time(line: str, year: int) -> float | None:
    """Pacemaker's detail-log stamp, e.g. 'Nov 21 11:14:00.183', in the host's local time."""
    try:
        return datetime.strptime(f"{year} {line[:19]}", "%Y %b %d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def first_events(lab: LabLayout, nodes: list[str], victim: str, vm: str,
                 since: float) -> dict[str, float]:
    found: dict[str, float] = {}
    year = datetime.now().year
    patterns = _markers(victim, vm)
    for node in nodes:
        log = lab.root / "nodes" / node / "fs" / "var-log-pacemaker" / "pacemaker.log"
        for line in log.read_text(errors="replace").splitlines():
            stamp = _log_time(line, year)
            if stamp is None or stamp < since - 0.001:
                continue
            for name, pattern in patterns.items():
                if pattern.search(line) and stamp < found.get(name, float("inf")):
                    found[name] = stamp
    missing = [name for name in patterns if name not in found]
    if missing:
        raise LabError(f"no {', '.join(missing)} in the Pacemaker logs after the kill")
    return found


def one_failover(state: LabState, vm: str) -> dict[str, float]:
    view = wait_until(state, lambda v: v.roles.get(vm) == "Started", f"{vm} started",
                      SETTLE_TIMEOUT)
    victim = view.resources[vm][0]
    killed = time.time()
    request(state.lab.control_socket, "off", node=victim, client="bench/failover")
    wait_until(state, lambda v: v.roles.get(vm) == "Started" and v.resources[vm]
               and v.resources[vm][0] != victim, f"{vm} started off {victim}", SETTLE_TIMEOUT)
    observed = time.time() - killed
    marks = first_events(state.lab, state.node_names, victim, vm, killed)
    phases = {
        "detection": marks["lost"] - killed,
        "decision": marks["fence_requested"] - marks["lost"],
        "fencing": marks["fenced"] - marks["fence_requested"],
        "recovery": marks["start_requested"] - marks["fenced"],
        "start": marks["started"] - marks["start_requested"],
        "total": marks["started"] - killed,
        "observed": observed,
    }
    # The fenced node reboots (fence action reboot) and rejoins before the next repetition.
    wait_until(LabState.load(state.lab), lambda v: v.online == set(state.node_names)
               and v.dc is not None, "the fenced node back online", SETTLE_TIMEOUT)
    return phases


def run_agent(lab: LabLayout, agent: str, vm: str, repetitions: int) -> list[dict[str, float]]:
    state = LabState.load(lab)
    create_vm(state, vm, agent=agent)
    runs = []
    for i in range(repetitions):
        phases = one_failover(LabState.load(lab), vm)
        runs.append(phases)
        print(f"  {agent} #{i + 1}: " + "  ".join(f"{k} {v:.2f}s" for k, v in phases.items()),
              flush=True)
    node_run(LabState.load(lab), LabState.load(lab).powered_nodes()[0],
             ["pcs", "resource", "delete", vm])
    return runs


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in (*PHASES, "observed")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kill -> VM running elsewhere, 5 times")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--name", default="bench", help="lab name (default bench)")
    parser.add_argument("--no-anchor", action="store_true",
                        help=f"skip the comparison run with {ANCHOR}")
    args = parser.parse_args(argv)
    lab = LabLayout.for_lab(args.name)
    try:
        lifecycle.up(lab, 3, progress=lambda m: print(m, flush=True))
        try:
            results = {AGENT: medians(run_agent(lab, AGENT, "vmbench", args.repetitions))}
            if not args.no_anchor:
                results[ANCHOR] = medians(run_agent(lab, ANCHOR, "vmanchor", args.repetitions))
        finally:
            lifecycle.down(lab, progress=lambda _m: None)
    except LabError as e:
        print(f"bench/failover: {e}", file=sys.stderr)
        return 1
    print(f"\nmedian of {args.repetitions} power cuts (seconds; total = kill -> start OK in "
          "the logs, observed = kill -> crm_mon shows it started)")
    print(f"{'agent':30}" + "".join(f"{p:>11}" for p in (*PHASES, "observed")))
    for agent, m in results.items():
        print(f"{agent:30}" + "".join(f"{m[p]:11.2f}" for p in (*PHASES, "observed")))
    if ANCHOR in results:
        ours, anchor = results[AGENT], results[ANCHOR]
        print(f"{'ratio ours/anchor':30}" + "".join(
            f"{ours[p] / anchor[p]:11.2f}" if anchor[p] > 0 else f"{'-':>11}"
            for p in (*PHASES, "observed")))
    return 0
