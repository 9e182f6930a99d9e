"""`ravada-lab tour`: a guided tour of a demo lab (`make demo`), one step at a time.

Every command is shown as a line to paste on the host (node commands through `ravada-lab
exec`), and run as shown: no shell, argv from shlex. A step may wait for the cluster to show
its outcome, then shows that outcome with more commands and the timings it measured. The
steps are chosen from where the VMs run when the tour begins; `make demo` prints the same list.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import ceph_service
from .cluster import ClusterView, observe
from .errors import LabError
from .layout import DEFAULT_NAME, DEFAULT_ROOT, MAX_NODES, LabLayout
from .state import LabState
from .vms import create_argv

MOVED_VM = "vm1"           # live-migrated, then its node loses power
NEW_VM = "vm4"             # placed by ravada-place (its XML/image made by `make demo`)
COMMAND_TIMEOUT = 180.0
OUTCOME_TIMEOUT = 180.0


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    # The point of the step is that this command is refused: it succeeding is a failure.
    refused: bool = False

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Outcome:
    """What the cluster shows once a step's commands took effect (and, when `also` is
    given, what the lab's files show too)."""
    what: str
    reached: Callable[[ClusterView], bool]
    also: Callable[[LabLayout], bool] | None = None


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    commands: tuple[Command, ...]
    outcome: Outcome | None = None
    then: tuple[Command, ...] = ()       # shown once the outcome is reached
    measure: Callable[["Run"], list[str]] | None = None
    run: bool = True                     # the tear-down is shown, not run


@dataclass
class Run:
    """Wall-clock marks of a step being run, for its measurements."""
    lab: LabLayout
    started: float = 0.0                 # time.time() before the first command
    reached: float = 0.0                 # ... when the outcome was seen


# ---- building the tour ----------------------------------------------------------------------
def build(state: LabState) -> list[Step]:
    view = observe(state)
    placement = {vm: nodes[0] for vm, nodes in view.resources.items() if len(nodes) == 1}
    return steps(state.lab, state.node_names, placement, ceph_service.has_ceph(state.lab))


def steps(lab: LabLayout, nodes: list[str], placement: dict[str, str],
          ceph: bool) -> list[Step]:
    """The tour for VMs running where `placement` says (vm -> node)."""
    if MOVED_VM not in placement:
        raise LabError(f"{MOVED_VM} is not running: the tour needs the VMs of `make demo`")
    if len(nodes) < 3:
        raise LabError("the tour needs a lab of at least 3 nodes (quorum after a power cut)")
    source = placement[MOVED_VM]
    target = nodes[(nodes.index(source) + 1) % len(nodes)]
    cli = LabCli(lab)
    tour = [look(cli, source), migrate(cli, source, target)]
    if ceph:
        tour.append(second_start(cli, target, source))
    tour += [power_cut(cli, target, source, ceph), place(cli, lab, source, ceph), teardown(cli)]
    return tour


@dataclass(frozen=True)
class LabCli:
    """`ravada-lab` command lines for this lab, as a user types them on the host."""
    lab: LabLayout

    def options(self) -> list[str]:
        options = [] if self.lab.name == DEFAULT_NAME else ["--name", self.lab.name]
        return options + ([] if self.lab.root.parent == DEFAULT_ROOT
                          else ["--root", str(self.lab.root.parent)])

    def __call__(self, *args: str) -> Command:
        return Command(("ravada-lab", *args, *self.options()))

    def on(self, node: str, *argv: str, refused: bool = False) -> Command:
        return Command(("ravada-lab", "exec", *self.options(), node, "--", *argv), refused)


def look(cli: LabCli, via: str) -> Step:
    return Step(
        "The lab", "Real Pacemaker nodes (namespaces of this host), fencing on, the demo VMs "
        "under ocf:ravada:VirtualDomain.",
        (cli("status"), cli.on(via, "crm_mon", "-1")))


def migrate(cli: LabCli, source: str, target: str) -> Step:
    return Step(
        f"Live migration: {MOVED_VM} from {source} to {target}",
        "pcs moves the VM and removes its temporary constraint. libvirt's record of the "
        "completed job on the target shows an incoming migration: the guest kept running, "
        "paused only for the downtime shown.",
        (cli.on(source, "pcs", "resource", "move", MOVED_VM, target),),
        Outcome(f"{MOVED_VM} started on {target}", lambda v: _runs_on(v, MOVED_VM, target)),
        (cli.on(target, "virsh", "domjobinfo", MOVED_VM, "--completed"),
         cli.on(target, "crm_resource", "--resource", MOVED_VM, "--list-operations")),
        measure=lambda run: [f"{MOVED_VM} seen running on {target} "
                             f"{run.reached - run.started:.1f} s after the move began "
                             "(pcs waits for the cluster twice)"])


def second_start(cli: LabCli, owner: str, other: str) -> Step:
    rbd = ("ravada-rbd", *ceph_service.client_args(cli.lab))
    return Step(
        f"RBD safety: a second start of {MOVED_VM}'s disk is refused",
        f"{MOVED_VM} runs on {owner} from the RBD image vmpool/{MOVED_VM}. An admin forces a "
        f"start on {other} behind Pacemaker's back: the agent sees the disk open by the "
        "owner's QEMU, waits a watch timeout for it to go, and refuses. Nothing starts.",
        (cli.on(owner, *rbd, "status", f"vmpool/{MOVED_VM}"),
         cli.on(other, "crm_resource", "--resource", MOVED_VM, "--force-start", refused=True)),
        then=(cli.on(owner, "crm_mon", "-1"),))


def power_cut(cli: LabCli, victim: str, via: str, ceph: bool) -> Step:
    text = (f"Every process of {victim} dies at once, {MOVED_VM}'s QEMU with it. The others "
            f"lose it, fence it (lab-fence powers it off and on again) and start "
            f"{MOVED_VM} elsewhere; {victim} reboots and rejoins.")
    # --verbose: without it only the latest success per node shows (the unfencing that
    # follows a reboot hides the reboot).
    then = [cli.on(via, "stonith_admin", "--history", victim, "--verbose"),
            cli.on(via, "crm_mon", "-1")]
    if ceph:
        text += (" With Ceph, rbd-fence (fence_rbd) is in the same fencing level: the node "
                 "is also cut off at the OSDs (its address blocklisted) before anything "
                 "starts elsewhere, and unfenced once it is back.")
        then += [Command(("grep", "-rhE", f"Operation .(off|on). .* targeting {victim} using",
                          "--include=pacemaker.log", str(cli.lab.root / "nodes"))),
                 Command(("grep", "-E", '"prefix": "osd blocklist", .*: finished',
                          str(_mon_log(cli.lab)))),
                 cli.on(via, "ceph", "--conf", str(ceph_service.conf_path(cli.lab)), "osd",
                        "blocklist", "ls"),
                 cli.on(via, "ravada-rbd", *ceph_service.client_args(cli.lab), "status",
                        f"vmpool/{MOVED_VM}")]
    node_entry = _node_entry(cli.lab, victim)
    return Step(
        f"Power cut: {victim} dies", text, (cli("kill", victim),),
        Outcome(f"{MOVED_VM} started on another node and {victim} back online"
                + (" and unfenced at the OSDs" if ceph else ""),
                lambda v: v.roles.get(MOVED_VM) == "Started"
                and victim not in v.resources.get(MOVED_VM, [victim]) and victim in v.online
                and not v.unclean,
                (lambda lab: _unfenced(lab, node_entry)) if ceph else None),
        tuple(then), measure=lambda run: _fencing_timings(run, victim, ceph))


def place(cli: LabCli, lab: LabLayout, via: str, ceph: bool) -> Step:
    config = lab.shared_dir / f"{NEW_VM}.xml"
    extra = ceph_service.vm_params(lab) if ceph else ()
    create = create_argv(NEW_VM, config, extra=(*extra, "--disabled"))
    return Step(
        f"Placement: where should {NEW_VM} go?",
        "The nodes publish their capacity (the nodeinfo clone); ravada-place scores every "
        f"node for the new, stopped {NEW_VM}, writes its choice as a location constraint, "
        "and Pacemaker starts it there.",
        (cli.on(via, *create), cli.on(via, "ravada-place", "place", "--explain", NEW_VM),
         cli.on(via, "ravada-place", "place", "--apply", NEW_VM),
         cli.on(via, "pcs", "resource", "enable", NEW_VM)),
        Outcome(f"{NEW_VM} started", lambda v: v.roles.get(NEW_VM) == "Started"),
        (cli.on(via, "pcs", "constraint", "location", "config", "resources", NEW_VM),
         cli.on(via, "crm_mon", "-1")))


def teardown(cli: LabCli) -> Step:
    return Step(
        "Tear down", "Stops every node, VM and daemon of the lab (and its Ceph) and removes "
        "its state; `make demo-down` does the same from the source tree.",
        (cli("down"),), run=False)


def _node_entry(lab: LabLayout, node: str) -> str:
    """fence_rbd's blocklist entry for a whole node: every client of its address."""
    return f"{lab.node(node, MAX_NODES).address}:0/0"


def _unfenced(lab: LabLayout, node_entry: str) -> bool:
    """fence_rbd put the node's entry on the blocklist and took it off again."""
    ops = [op for _t, user, op, addr in _blocklist_changes(lab)
           if user == "fence" and addr == node_entry]
    return "add" in ops and ops[-1] == "rm"


def _runs_on(view: ClusterView, vm: str, node: str) -> bool:
    return view.roles.get(vm) == "Started" and view.resources.get(vm) == [node]


def _mon_log(lab: LabLayout) -> Path:
    from .ceph import ceph_dir
    return ceph_dir(lab) / "log" / "mon.a.log"


# ---- measuring ------------------------------------------------------------------------------
_FENCED = re.compile(r"^(\w{3} +\d+ [\d:.]+) \S+ pacemaker-fenced .*Operation '(\w+)' \[\d+\] "
                     r"targeting (\S+) using (\S+) returned (\d+)")
_BLOCKLIST = re.compile(r"^(\S+) .*entity='client\.(\w+)' cmd='(.*)': finished$")


def _fencing_timings(run: Run, victim: str, ceph: bool) -> list[str]:
    lines = [f"power cut -> {MOVED_VM} running elsewhere, {victim} rejoined: "
             f"{run.reached - run.started:.1f} s"]
    ops = [op for op in _fence_ops(run.lab, victim) if op[0] >= run.started]
    # Alone in its level lab-fence reboots; with rbd-fence beside it, it powers off first.
    power_off = next((t for t, action, device in ops
                      if action in ("off", "reboot") and device == ceph_service.POWER_DEVICE), None)
    if power_off:
        lines.append(f"power cut -> {victim} powered off by lab-fence: "
                     f"{power_off - run.started:.2f} s (most of it: corosync noticing the loss)")
    if ceph:
        rbd_off = next((t for t, action, device in ops
                        if action == "off" and device == ceph_service.FENCE_DEVICE), None)
        changes = [(t, op) for t, user, op, addr in _blocklist_changes(run.lab)
                   if t >= run.started and user == "fence"
                   and addr == _node_entry(run.lab, victim)]
        entry = next((t for t, op in changes if op == "add"), None)
        removed = next((t for t, op in changes if op == "rm"), None)
        if power_off and rbd_off:
            lines.append(f"fence_rbd (after lab-fence in the level) returned "
                         f"{rbd_off - power_off:.2f} s after lab-fence")
        if entry:
            lines.append(f"{victim} blocklisted at the OSDs {entry - run.started:.2f} s after "
                         "the power cut")
        if removed:
            lines.append(f"{victim} unfenced (its entry removed) {removed - run.started:.1f} s "
                         "after the power cut")
    return lines


def _fence_ops(lab: LabLayout, victim: str) -> list[tuple[float, str, str]]:
    """(time, action, device) of every successful fence operation on `victim`, all nodes."""
    year = datetime.now().year
    ops = []
    for log in lab.root.glob("nodes/*/fs/var-log-pacemaker/pacemaker.log"):
        for line in log.read_text(errors="replace").splitlines():
            match = _FENCED.match(line)
            if match and match[3] == victim and match[5] == "0":
                when = datetime.strptime(f"{year} {match[1]}", "%Y %b %d %H:%M:%S.%f")
                ops.append((when.timestamp(), match[2], match[4]))
    return sorted(ops)


def _blocklist_changes(lab: LabLayout) -> list[tuple[float, str, str, str]]:
    """(time, user, add|rm, address) of the blocklist changes in the monitor's audit log."""
    changes = []
    try:
        text = _mon_log(lab).read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        match = _BLOCKLIST.match(line)
        if not match or '"osd blocklist"' not in match[3]:
            continue
        command = json.loads(match[3])[0]
        when = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%f%z")
        changes.append((when.astimezone(timezone.utc).timestamp(), match[2],
                        command.get("blocklistop", ""), command.get("addr", "")))
    return changes


# ---- showing and running --------------------------------------------------------------------
def render(tour: list[Step]) -> str:
    lines = ["", "The tour (`ravada-lab tour` runs it step by step; every line pastes into "
             "this host's shell):"]
    for number, step in enumerate(tour, 1):
        lines += ["", f"{number}. {step.title}", *_wrap(step.text, "   ")]
        lines += [f"   $ {c.line}" for c in step.commands]
        if step.outcome:
            lines.append(f"   (wait until {step.outcome.what})")
        lines += [f"   $ {c.line}" for c in step.then]
    return "\n".join(lines)


def run(state: LabState, tour: list[Step], pause: bool, out=print) -> None:
    for number, step in enumerate(tour, 1):
        out(f"\n=== {number}/{len(tour)}. {step.title}")
        out("\n".join(_wrap(step.text, "")))
        if not step.run:
            for command in step.commands:
                out(f"$ {command.line}      # when you are done")
            return
        marks = Run(state.lab, started=time.time())
        for command in step.commands:
            execute(command, out)
        if step.outcome:
            out(f"... waiting until {step.outcome.what}")
            _wait(state.lab, step.outcome)
        marks.reached = time.time()
        for command in step.then:
            execute(command, out)
        if step.measure:
            out("measured: " + "\n          ".join(step.measure(marks)))
        if pause and number < len(tour):
            try:
                input("\n[Enter] for the next step, Ctrl-C to stop ")
            except EOFError:
                raise LabError("input ended: nothing to pause on (use --no-pause)") from None


def execute(command: Command, out=print) -> None:
    out(f"\n$ {command.line}")
    executable = shutil.which(command.argv[0])
    if executable is None:
        raise LabError(f"{command.argv[0]} is not installed (make install install-lab)")
    try:
        result = subprocess.run([executable, *command.argv[1:]], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"{command.line}: no answer within {COMMAND_TIMEOUT:.0f}s") from None
    output = (result.stdout + result.stderr).rstrip()
    if output:
        out(output)
    if command.refused and result.returncode == 0:
        raise LabError(f"{command.line} succeeded: it had to be refused")
    if command.refused:
        out(f"(refused, exit {result.returncode}, as it must be)")
    elif result.returncode:
        raise LabError(f"{command.line} failed (exit {result.returncode})")


def _wait(lab: LabLayout, outcome: Outcome) -> None:
    deadline = time.monotonic() + OUTCOME_TIMEOUT
    while True:
        try:
            if outcome.reached(observe(LabState.load(lab))) and (
                    outcome.also is None or outcome.also(lab)):
                return
        except LabError:
            pass  # no healthy node to ask right now (a power cut): ask again
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {OUTCOME_TIMEOUT:.0f}s waiting until {outcome.what}")
        time.sleep(0.25)


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, 92, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)
