"""One real 3-node lab (corosync + Pacemaker + libvirtd + QEMU per node) for the whole session,
and the helpers the end-to-end tests share (a module of its own: `conftest` is not a unique
module name once the whole test tree is collected).

The lab is driven through its command line (`lab/ravada-lab`) the way an admin would, and
observed from the host: crm_mon XML inside a node, QEMU processes found by namespace membership,
each node's libvirtd through its private socket.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ravada_lab import lifecycle, vms
from ravada_lab.cluster import ClusterView, observe, wait_until
from ravada_lab.layout import DEFAULT_ROOT, LabLayout
from ravada_lab.state import LabState, node_run
from support.stack import require_stack

TOP = Path(__file__).resolve().parents[2]
RAVADA_LAB = [str(TOP / "lab" / "ravada-lab")]
# Per-session names: two test sessions on one host (a developer and CI) never share a lab.
SESSION = f"{os.getpid() % 100000}"
LAB_NAME = f"e2e-{SESSION}"
NODES = 3
SETTLE_TIMEOUT = 90.0


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(RAVADA_LAB + list(args), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"ravada-lab {' '.join(args)} -> rc {result.returncode}\n"
                             f"{result.stdout}{result.stderr}")
    return result


def require_lab_stack() -> None:
    require_stack("the lab", "corosync", "pacemakerd", "libvirtd", "virtlogd", "pcs",
                  "qemu-system-x86_64", "nsenter", "unshare", "make")


def install_tree() -> None:
    """Pacemaker finds fence agents only in /usr/sbin and OCF agents only under /usr/lib/ocf."""
    subprocess.run(["make", "-C", str(TOP), "install", "install-lab"], check=True,
                   capture_output=True)


@dataclass
class Lab:
    layout: LabLayout

    @property
    def name(self) -> str:
        return self.layout.name

    def state(self) -> LabState:
        return LabState.load(self.layout)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, "--name", self.name, check=check)

    def run(self, node: str, *argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return node_run(self.state(), node, list(argv), check=check, timeout=timeout)

    def pcs(self, *args: str, node: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        state = self.state()
        return node_run(state, node or state.healthy_nodes()[0], ["pcs", *args], timeout=timeout)

    def view(self) -> ClusterView:
        return observe(self.state())

    def wait(self, predicate, what: str, timeout: float = SETTLE_TIMEOUT) -> ClusterView:
        return wait_until(self.state(), predicate, what, timeout)

    def create_vm(self, name: str, *extra: str) -> None:
        vms.create_vm(self.state(), name, extra=extra)

    def wait_started(self, vm: str, not_on: tuple[str, ...] = (),
                     timeout: float = SETTLE_TIMEOUT) -> str:
        view = self.wait(lambda v: v.roles.get(vm) == "Started"
                         and len(v.resources.get(vm, [])) == 1
                         and v.resources[vm][0] not in not_on,
                         f"{vm} started (not on {', '.join(not_on) or '-'})", timeout)
        return view.resources[vm][0]

    def delete_vm(self, name: str) -> None:
        # pcs waits for the resource to stop, which can take a migration or a stop timeout.
        self.pcs("resource", "delete", name, timeout=240.0)
        self.wait(lambda v: name not in v.resources, f"{name} deleted")

    def settle(self) -> None:
        """Every node online (a fenced node has rebooted and rejoined), no failures left."""
        names = self.state().node_names
        self.wait(lambda v: v.online == set(names) and v.settled(names), "all lab nodes online")
        self.pcs("resource", "cleanup")

    def fence_events(self, node: str) -> list[dict]:
        """Every fencing event of `node` (--verbose: otherwise only the latest success per
        node is listed, which hides a reboot behind the unfencing that follows it), as every
        healthy node's fencer knows them: a node that just rebooted holds no history until
        its fencer has synchronised with the others, so one node's answer is not enough."""
        from lxml import etree
        events: dict[tuple, dict] = {}
        for member in self.state().healthy_nodes():
            out = self.run(member, "stonith_admin", "--history", node, "--verbose",
                           "--output-as=xml", check=False)
            if out.returncode == 0:
                for event in etree.fromstring(out.stdout.encode()).iter("fence_event"):
                    events.setdefault(tuple(sorted(event.attrib.items())), dict(event.attrib))
        return list(events.values())

    def ssh(self, source: str, target: str, *argv: str,
            check: bool = True) -> subprocess.CompletedProcess:
        """`ssh TARGET CMD` run inside `source`: real OpenSSH between lab nodes, host keys
        verified against the known_hosts `ravada-lab up` wrote, the lab root key."""
        return self.run(source, "ssh", target, *argv, check=check)

    def shape(self, rate: str | None) -> None:
        """Limit every node's link to `rate` each way (tc syntax, e.g. 200mbit); None: unshaped."""
        self.cli("shape", *(["--rate", rate] if rate else ["--off"]))

    def power_ops(self, node: str, since: float, client: str = "fence_ravada_lab") -> list[dict]:
        """The lab power switch's record of `node` operated by `client` since the wall-clock
        time `since`; unlike Pacemaker's fencing history it survives a whole-cluster stop."""
        return [e for e in self.state().data["power_log"]
                if e["node"] == node and e["client"] == client and e["at"] >= since]


def remove_stale_labs(prefix: str, before_down: Callable[[LabLayout], None] = lambda _l: None) -> None:
    """Labs named PREFIX* of killed test sessions (their controller is gone); live ones are
    someone's run."""
    if not DEFAULT_ROOT.is_dir():
        return
    for directory in DEFAULT_ROOT.glob(f"{prefix}*"):
        layout = LabLayout.for_lab(directory.name)
        # Age guard: a lab being created by another session has no controller for a moment.
        recent = time.time() - directory.stat().st_mtime < 120
        if not recent and not lifecycle.is_up(layout):
            before_down(layout)
            lifecycle.down(layout, progress=lambda _m: None)


@contextlib.contextmanager
def running_lab(name: str, request, nodes: int = NODES, remote_nodes: int = 0,
                *up_args: str) -> Iterator[Lab]:
    """A lab up for a fixture's scope: its logs kept when tests failed meanwhile, always down.
    `remote_nodes`: also pacemaker_remote nodes remote1..N; `up_args`: more `up` options
    (e.g. "--link-rate", "200mbit")."""
    layout = LabLayout.for_lab(name)
    started = time.monotonic()
    failed_before = request.session.testsfailed
    run_cli("up", "--nodes", str(nodes), "--remote-nodes", str(remote_nodes), "--name", name,
            *up_args)
    print(f"\nlab {name!r} up in {time.monotonic() - started:.1f}s")
    try:
        yield Lab(layout)
    finally:
        if request.session.testsfailed > failed_before:
            keep_logs(layout)
        run_cli("down", "--name", name, check=False)
        lifecycle.down(layout, progress=lambda _m: None)


@pytest.fixture(scope="session")
def installed() -> None:
    """The stack is there and the tree's agents and tools are where Pacemaker looks."""
    require_lab_stack()
    install_tree()


@pytest.fixture(scope="session")
def lab(installed, request):
    remove_stale_labs("e2e-")
    with running_lab(LAB_NAME, request) as running:
        yield running


def keep_logs(layout: LabLayout) -> None:
    """The lab directory goes with the lab: save what explains a failure first."""
    import shutil
    import tempfile
    target = Path(tempfile.mkdtemp(prefix=f"ravada-lab-{layout.name}-"))
    for log in [layout.controller_log, *layout.root.glob("nodes/*/console/*"),
                *layout.root.glob("nodes/*/fs/var-log-*/*.log")]:
        relative = log.relative_to(layout.root)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, target / relative)
    print(f"\nlab logs kept in {target}")


@pytest.fixture
def settled_lab(lab: Lab) -> Lab:
    lab.settle()
    return lab


def domain_state(lab: Lab, node: str, vm: str) -> tuple[int, int]:
    """libvirt's (state, reason) of guest `vm` on `node`."""
    conn = vms.libvirt_connection(lab.state(), node)
    try:
        state, reason = conn.lookupByName(vm).state()
        return state, reason
    finally:
        conn.close()


class QemuWatch:
    """Samples, in a thread, on which nodes each guest's QEMU process exists."""

    def __init__(self, lab: Lab, interval: float = 0.02):
        self.lab = lab
        self.interval = interval
        self.samples: list[tuple[float, dict[str, list[str]]]] = []
        self._stop = False

    def __enter__(self) -> "QemuWatch":
        import threading
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.samples.append((time.monotonic(), vms.qemu_nodes(self.lab.state())))
            except (OSError, ValueError):
                pass  # state file being replaced: take the next sample
            time.sleep(self.interval)

    def nodes_of(self, vm: str) -> list[list[str]]:
        return [sorted(sample.get(vm, [])) for _t, sample in self.samples]
