"""Cluster emergency shutdown (a UPS on low battery) and its undo.

What it does, each step logged, all of it bounded by one deadline:

 1. Takes the lock: a cluster_property_set `ravada-emergency` created with `cibadmin --create`,
    which the CIB manager refuses when it exists, so of several invocations (NUT on every
    node) exactly one does the work.  The others wait for it, then stop their own node's
    stack (or take over a stale lock, whose owner's deadline has passed: every step is
    idempotent).
 2. Makes sure nothing is recovered or fenced meanwhile: operation default on-fail=block (a
    failed or timed-out stop blocks the resource instead of fencing its node), and VMs are
    stopped through target-role=Stopped, so Pacemaker never starts them elsewhere.
    maintenance-mode would be wrong: it leaves the VMs running.
 3. Stops the VMs gracefully, one priority class at a time, lowest `priority` meta first
    (the most important go last), each VM's previous target-role saved in its meta attribute
    ravada-emergency-saved-target-role.
 4. Escalates when graceful stopping would miss the deadline: from the escalation point on,
    the VMs not stopped yet get force_stop=true (the agent destroys them at once) and are
    all stopped together.  The escalation point leaves room for the longest stop timeout and
    for stopping the stack.
 5. Sets stop-all-resources=true (the clones and fence devices stop; nothing starts when the
    cluster comes back before `resume`), then stops Pacemaker and corosync on every node
    (this one last) and, with --poweroff, powers them off.  Remote nodes (pacemaker_remote)
    run neither: stopping the full nodes ends their connections cleanly, and with
    --poweroff they are powered off first.

`resume` (after power returns and the stack is started again) restores every saved value and
removes the lock.
"""
from __future__ import annotations

import os
import re
import socket
import syslog
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from . import pacemaker
from .deadline import Deadline
from .nodeshell import NodeCommandError, NodeShell

LOCK_SET = "ravada-emergency"
SAVED_ROLE = "ravada-emergency-saved-target-role"
SAVED_FORCE = "ravada-emergency-saved-force-stop"
UNSET = "(unset)"
VM_TYPES = {"VirtualDomain"}
POLL = 2.0
# Time kept for stop-all-resources and stopping the stack at the end.
STACK_RESERVE = 60.0
# A stop timeout when the CIB gives none (the agent's advertised stop timeout).
DEFAULT_STOP_TIMEOUT = 90.0
# A lock whose owner's deadline passed this long ago is abandoned.
STALE_AFTER = 30.0


class EmergencyError(Exception):
    pass


@dataclass(frozen=True)
class Vm:
    id: str
    priority: int
    stop_timeout: float
    target_role: str | None
    force_stop: str | None


class Journal:
    """Every step to syslog (ident ravada-cluster) and to stderr with a time stamp."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        syslog.openlog("ravada-cluster", syslog.LOG_PID, syslog.LOG_DAEMON)
        self.echo = echo

    def __call__(self, line: str) -> None:
        syslog.syslog(syslog.LOG_NOTICE, line)
        self.echo(f"{time.strftime('%H:%M:%S')} {line}")


def _seconds(text: str | None) -> float | None:
    match = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|msec|s|sec|m|min|h|hr)?\s*$", text or "")
    if not match:
        return None
    factor = {"ms": 0.001, "msec": 0.001, "m": 60, "min": 60, "h": 3600, "hr": 3600}.get(match.group(2) or "s", 1)
    return float(match.group(1)) * factor


def _nvpairs(element: etree._Element | None, block: str) -> dict[str, str]:
    if element is None:
        return {}
    return {nv.get("name"): nv.get("value", "") for nv in element.iterfind(f"{block}/nvpair")}


def vms_of(cib: etree._Element) -> list[Vm]:
    result = []
    for primitive in cib.iterfind("configuration/resources//primitive"):
        if primitive.get("type") not in VM_TYPES:
            continue
        meta = _nvpairs(primitive, "meta_attributes")
        parent = primitive.getparent()
        parent_meta = _nvpairs(parent, "meta_attributes") if parent.tag == "group" else {}
        try:
            priority = int(meta.get("priority") or parent_meta.get("priority") or 0)
        except ValueError:
            priority = 0
        stop = next((op for op in primitive.iterfind("operations/op") if op.get("name") == "stop"), None)
        timeout = _seconds(stop.get("timeout")) if stop is not None else None
        result.append(Vm(primitive.get("id"), priority, timeout or DEFAULT_STOP_TIMEOUT,
                         meta.get("target-role"), _nvpairs(primitive, "instance_attributes").get("force_stop")))
    return result


def priority_classes(vms: list[Vm]) -> list[list[Vm]]:
    """Lowest priority first: the VMs that matter most are stopped last."""
    classes: dict[int, list[Vm]] = {}
    for vm in vms:
        classes.setdefault(vm.priority, []).append(vm)
    return [sorted(classes[p], key=lambda v: v.id) for p in sorted(classes)]


def lock_values(cib: etree._Element) -> dict[str, str] | None:
    for nv_set in cib.iterfind("configuration/crm_config/cluster_property_set"):
        if nv_set.get("id") == LOCK_SET:
            return {nv.get("name").removeprefix(f"{LOCK_SET}-"): nv.get("value", "")
                    for nv in nv_set.iterfind("nvpair")}
    return None


def _lock_element(values: dict[str, str]) -> etree._Element:
    nv_set = etree.Element("cluster_property_set", id=LOCK_SET)
    for name, value in values.items():
        etree.SubElement(nv_set, "nvpair", id=f"{LOCK_SET}-{name}", name=f"{LOCK_SET}-{name}", value=value)
    return nv_set


def _set_lock(name: str, value: str, deadline: Deadline) -> None:
    """Update one value of the lock set (cibadmin --modify of that pair)."""
    configuration = etree.Element("configuration")
    crm_config = etree.SubElement(configuration, "crm_config")
    crm_config.append(_lock_element({name: value}))
    pacemaker.run(["cibadmin", "--modify", "--allow-create", "--scope", "configuration", "--xml-text",
                   etree.tostring(configuration, encoding="unicode")], deadline)


class EmergencyShutdown:
    def __init__(self, deadline_seconds: float, shell: NodeShell | None, log: Callable[[str], None],
                 poweroff: bool = False, tick: Callable[[], None] = lambda: None,
                 stack_reserve: float = STACK_RESERVE) -> None:
        self.seconds = deadline_seconds
        self.deadline = Deadline(deadline_seconds)
        self.shell = shell
        self.log = log
        self.poweroff = poweroff
        self.tick = tick        # tests: advance a simulated cluster between polls
        self.reserve = min(stack_reserve, deadline_seconds / 4)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    # -- the lock ---------------------------------------------------------------------------

    def acquire(self) -> bool:
        """True when this invocation does the work; False when another one did or does it."""
        now = time.time()
        values = {"owner": self.owner, "started": f"{now:.0f}", "deadline": f"{now + self.seconds:.0f}",
                  "state": "starting"}
        cib = pacemaker.query_cib(self.deadline)
        saved = {"on-fail": pacemaker.option(cib, "op_defaults", "on-fail"),
                 "stop-all-resources": pacemaker.option(cib, "crm_config", "stop-all-resources")}
        for name, value in saved.items():
            values[f"saved-{name}"] = UNSET if value is None else value
        if pacemaker.create_element("crm_config", _lock_element(values), self.deadline):
            self.log(f"emergency shutdown: lock taken by {self.owner}, deadline {self.seconds:.0f}s")
            return True
        held = lock_values(pacemaker.query_cib(self.deadline)) or {}
        owner_deadline = float(held.get("deadline") or 0)
        if held.get("state") != "done" and time.time() > owner_deadline + STALE_AFTER:
            self.log(f"emergency shutdown: the lock of {held.get('owner')} is stale (its deadline passed): "
                     "taking over")
            _set_lock("owner", self.owner, self.deadline)
            _set_lock("deadline", f"{now + self.seconds:.0f}", self.deadline)
            return True
        self.log(f"emergency shutdown already run by {held.get('owner')} (state {held.get('state')}): "
                 "waiting for it")
        self._wait_for_owner()
        return False

    def _wait_for_owner(self) -> None:
        while True:
            try:
                held = lock_values(pacemaker.query_cib(self.deadline)) or {}
            except pacemaker.PacemakerError:
                self.log("the cluster stack here is gone: the emergency shutdown reached this node")
                return
            if held.get("state") in ("stopping-stack", "done"):
                self.log(f"the emergency shutdown is at: {held.get('state')}")
                return
            self.tick()
            if not self.deadline.pause(POLL):
                self.log("deadline reached while waiting for the other invocation")
                return

    # -- the work ---------------------------------------------------------------------------

    def plan(self, cib: etree._Element) -> tuple[list[list[Vm]], float]:
        vms = vms_of(cib)
        longest = max((vm.stop_timeout for vm in vms), default=0.0)
        # Escalate so that a stop begun then still ends before the stack must be stopped.
        escalate_after = self.seconds - self.reserve - longest
        return priority_classes(vms), escalate_after

    def describe(self) -> list[str]:
        cib = pacemaker.query_cib(self.deadline)
        status = pacemaker.cluster_status(self.deadline)
        active = _active(status)
        classes, escalate_after = self.plan(cib)
        lines = [f"deadline {self.seconds:.0f}s; escalation to forced stops after "
                 f"{max(0.0, escalate_after):.0f}s; {self.reserve:.0f}s kept for stopping the stack"]
        for number, vms in enumerate(classes, 1):
            names = ", ".join(f"{vm.id} ({', '.join(sorted(active.get(vm.id, ()))) or 'stopped'})" for vm in vms)
            lines.append(f"class {number} (priority {vms[0].priority}): stop {names}")
        remote = _online_nodes(status, kind="remote")
        lines.append("then: op_defaults on-fail=block, stop-all-resources=true, stop pacemaker and corosync on "
                     f"{', '.join(_online_nodes(status)) or 'no node'}"
                     + (f", power off (remote nodes {', '.join(remote)} too)" if self.poweroff and remote
                        else ", power off" if self.poweroff else ""))
        return lines

    def run(self) -> bool:
        """The whole shutdown; True when every VM stopped before the deadline.  A step that
        fails is logged and the next one is still taken: the stack must go down regardless."""
        if not self.acquire():
            # NUT runs us on every node: each one at least takes its own node down once the
            # owner has stopped the VMs (a node already stopped just says so).
            self._stop_local_stack()
            return True
        started = time.monotonic()
        self._step("op_defaults on-fail=block: a failed stop blocks, nothing is fenced",
                   lambda: pacemaker.set_option("op_defaults", "on-fail", "block", self.deadline))
        self._step("state: stopping-vms", lambda: _set_lock("state", "stopping-vms", self.deadline))
        classes, escalate_after = self.plan(pacemaker.query_cib(self.deadline))
        escalate_at = started + escalate_after
        asked: set[str] = set()
        for vms in classes:
            if time.monotonic() >= escalate_at:
                break
            self.log(f"stopping priority {vms[0].priority}: {', '.join(vm.id for vm in vms)}")
            for vm in vms:
                self._step(None, lambda vm=vm: self._stop(vm, force=False))
                asked.add(vm.id)
            self._wait_stopped({vm.id for vm in vms}, escalate_at)
        all_vms = [vm for vms in classes for vm in vms]
        running = self._running({vm.id for vm in all_vms})
        left = [vm for vm in all_vms if vm.id not in asked or vm.id in running]
        if left:
            self.log(f"escalating: forced stop of {', '.join(vm.id for vm in left)}")
            for vm in left:
                self._step(None, lambda vm=vm: self._stop(vm, force=True))
        end_of_vms = started + self.seconds - self.reserve
        still = self._wait_stopped({vm.id for vm in all_vms}, end_of_vms)
        if still:
            self.log(f"still running at the deadline: {', '.join(sorted(still))}")
        else:
            self.log("every VM is stopped")
        # From here on the stack goes down even when the deadline is spent.
        self.deadline = Deadline(max(self.deadline.remaining(), 30.0))
        self._step("stop-all-resources=true",
                   lambda: pacemaker.set_option("crm_config", "stop-all-resources", "true", self.deadline))
        self._step("state: stopping-stack", lambda: _set_lock("state", "stopping-stack", self.deadline))
        self._step(None, self._stop_stack)
        return not still

    def _step(self, done: str | None, action: Callable[[], None]) -> None:
        try:
            action()
        except (pacemaker.PacemakerError, NodeCommandError) as err:
            self.log(f"step failed, going on: {getattr(err, 'reason', err)}")
            return
        if done:
            self.log(done)

    def _stop(self, vm: Vm, force: bool) -> None:
        cib = pacemaker.query_cib(self.deadline)
        current = next((v for v in vms_of(cib) if v.id == vm.id), vm)
        primitive = cib.find(f"configuration/resources//primitive[@id='{vm.id}']")
        meta = _nvpairs(primitive, "meta_attributes")
        if SAVED_ROLE not in meta:   # a second run must not save our own Stopped
            pacemaker.set_meta(vm.id, SAVED_ROLE, current.target_role or UNSET, self.deadline)
        if force:
            if SAVED_FORCE not in meta:
                pacemaker.set_meta(vm.id, SAVED_FORCE, current.force_stop or UNSET, self.deadline)
            pacemaker.set_param(vm.id, "force_stop", "true", self.deadline)
        pacemaker.set_meta(vm.id, "target-role", "Stopped", self.deadline)

    def _running(self, ids: set[str]) -> set[str]:
        try:
            active = _active(pacemaker.cluster_status(self.deadline))
        except pacemaker.PacemakerError as err:
            self.log(f"cannot read the cluster status: {err.reason}")
            return set(ids)
        return {rsc for rsc in ids if active.get(rsc)}

    def _wait_stopped(self, ids: set[str], until: float) -> set[str]:
        while True:
            self.tick()
            running = self._running(ids)
            if not running:
                return running
            if time.monotonic() + POLL > until or not self.deadline.pause(POLL):
                return running

    def _stop_stack(self) -> None:
        if self.shell is None:
            self.log("no node shell: the cluster stack is left running")
            return
        status = pacemaker.cluster_status(self.deadline)
        nodes = _online_nodes(status)
        remote = _online_nodes(status, kind="remote")
        others = [n for n in nodes if n != self.shell.local_node]
        local = [n for n in nodes if n == self.shell.local_node]
        _set_lock("state", "done", self.deadline)
        for what in ("pacemaker", "corosync"):
            self._on_nodes(others, what)
            self._on_nodes(local, what)
        if self.poweroff:
            # Their connections ended with the full nodes' stack: no one is left to fence them.
            for node in remote + others + local:
                try:
                    self.log(f"{node}: powering off")
                    self.shell.power_off(node, self.deadline.bounded(30))
                except NodeCommandError as err:
                    self.log(f"{node}: {err}")

    def _stop_local_stack(self) -> None:
        if self.shell is None:
            return
        try:
            members = _online_nodes(pacemaker.cluster_status(self.deadline))
        except pacemaker.PacemakerError:
            return      # the stack here is gone already
        if self.shell.local_node in members:
            for what in ("pacemaker", "corosync"):
                self._on_nodes([self.shell.local_node], what)

    def _on_nodes(self, nodes: list[str], what: str) -> None:
        """Stop `what` (pacemaker or corosync) on the nodes at once, each until it is gone."""
        if not nodes:
            return
        stop = self.shell.stop_pacemaker if what == "pacemaker" else self.shell.stop_corosync

        def one(node: str) -> str:
            try:
                return f"{node}: {what} stopped" if stop(node, self.deadline.bounded(120)) \
                    else f"{node}: {what} was not running"
            except NodeCommandError as err:
                return f"{node}: stopping {what}: {err}"

        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            for line in pool.map(one, nodes):
                self.log(line)


def _active(status: etree._Element) -> dict[str, set[str]]:
    from ravada_placement.pacemaker import active_nodes
    return active_nodes(status)


def _online_nodes(status: etree._Element, kind: str = "member") -> list[str]:
    """Online nodes of crm_mon's type `kind`: "member" (corosync) or "remote"."""
    return [n.get("name") for n in status.iterfind("nodes/node")
            if n.get("online") == "true" and n.get("type", "member") == kind]


def resume(deadline: Deadline, log: Callable[[str], None], force: bool = False) -> list[str]:
    """Undo an emergency shutdown: saved target-roles and force_stop, on-fail,
    stop-all-resources, then the lock.  Idempotent; refuses while one still runs."""
    cib = pacemaker.query_cib(deadline)
    held = lock_values(cib)
    if held and held.get("state") not in ("done", "stopping-stack") and not force \
            and time.time() <= float(held.get("deadline") or 0) + STALE_AFTER:
        raise EmergencyError(f"an emergency shutdown by {held.get('owner')} is still running "
                             f"(state {held.get('state')}); use --force to resume anyway")
    restored = []
    for primitive in cib.iterfind("configuration/resources//primitive"):
        meta = _nvpairs(primitive, "meta_attributes")
        rsc = primitive.get("id")
        if SAVED_ROLE in meta:
            if meta[SAVED_ROLE] == UNSET:
                pacemaker.delete_meta(rsc, "target-role", deadline)
            else:
                pacemaker.set_meta(rsc, "target-role", meta[SAVED_ROLE], deadline)
            pacemaker.delete_meta(rsc, SAVED_ROLE, deadline)
            restored.append(rsc)
        if SAVED_FORCE in meta:
            if meta[SAVED_FORCE] == UNSET:
                pacemaker.delete_param(rsc, "force_stop", deadline)
            else:
                pacemaker.set_param(rsc, "force_stop", meta[SAVED_FORCE], deadline)
            pacemaker.delete_meta(rsc, SAVED_FORCE, deadline)
    if held is not None:
        for section, name in (("op_defaults", "on-fail"), ("crm_config", "stop-all-resources")):
            saved = held.get(f"saved-{name}", UNSET)
            if saved == UNSET:
                pacemaker.delete_option(section, name, deadline)
            else:
                pacemaker.set_option(section, name, saved, deadline)
        pacemaker.delete_element("crm_config", etree.Element("cluster_property_set", id=LOCK_SET), deadline)
    log(f"resumed: {len(restored)} VM(s) back to their target-role"
        + ("" if held is not None else " (no emergency shutdown lock was found)"))
    return restored
