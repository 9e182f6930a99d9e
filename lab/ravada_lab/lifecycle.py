"""Bringing a whole lab up and tearing it down (the controller does the per-node work)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import ravada_lab

from . import ceph_service, configs, procs, remote, shaping, sshd
from .cluster import ClusterView, wait_until
from .errors import LabError
from .layout import DEFAULT_ROOT, PRIVATE_DIRS, LabLayout
from .node import PYTHON, write_node_files
from .protocol import request
from .state import LabState, node_run

FENCE_AGENT = Path("/usr/sbin/fence_ravada_lab")
FENCE_DEVICE = "lab-fence"
NEEDED_COMMANDS = ("corosync", "pacemakerd", "libvirtd", "virtlogd", "pcs", "crm_mon",
                   "corosync-keygen", "nsenter", "unshare", "setsid", "ip", "mount",
                   "sshd", "ssh", "ssh-keygen", "rsync", "tc")
BOOT_TIMEOUT = 180.0
FORM_TIMEOUT = 120.0


def is_up(lab: LabLayout) -> bool:
    try:
        request(lab.control_socket, "ping", timeout=5)
        return True
    except LabError:
        return False


def preflight(lab: LabLayout) -> None:
    if os.geteuid() != 0:
        raise LabError("ravada-lab needs root (namespaces, mounts, network links)")
    missing = [c for c in NEEDED_COMMANDS if shutil.which(c) is None]
    if missing:
        raise LabError(f"missing commands: {', '.join(missing)} (run tools/install-deps)")
    absent = [d for d in PRIVATE_DIRS if not os.path.isdir(d)]
    if absent:
        raise LabError(f"missing {', '.join(absent)} (each node mounts its own copy over them; "
                       "install the packages with tools/install-deps)")
    if not FENCE_AGENT.exists():
        raise LabError(f"{FENCE_AGENT} is not installed; Pacemaker's fencer only finds fence "
                       "agents there (run `make install-lab`)")
    if is_up(lab):
        raise LabError(f"lab {lab.name!r} is already up (ravada-lab status --name {lab.name})")
    if lab.root.exists():
        raise LabError(f"stale state of lab {lab.name!r} in {lab.root}; clean it with "
                       f"`ravada-lab down --name {lab.name}`")


def write_lab_files(lab: LabLayout, count: int, remote_count: int = 0) -> None:
    lab.root.mkdir(parents=True, mode=0o755)
    lab.shared_dir.mkdir()
    subprocess.run(["corosync-keygen", "-k", str(lab.authkey)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    remote.make_authkey(lab)
    nodes = lab.nodes(count)
    every = nodes + lab.remote_nodes(remote_count)
    lab.hosts_file.write_text(configs.hosts_file(every))
    for node in every:
        write_node_files(lab, node, nodes)
    sshd.provision(lab, every)


def start_controller(lab: LabLayout, count: int, link_rate: str | None = None,
                     remote_count: int = 0) -> None:
    # The controller runs from the ravada_lab this run imported (source tree or installed).
    env = dict(os.environ, PYTHONPATH=str(Path(ravada_lab.__file__).resolve().parent.parent))
    with open(lab.controller_log, "ab") as log:
        controller = subprocess.Popen(
            ["unshare", "--net", "--", PYTHON, "-m", "ravada_lab.controller",
             "--name", lab.name, "--root", str(lab.root.parent), "--nodes", str(count),
             "--remote-nodes", str(remote_count),
             *(["--link-rate", link_rate] if link_rate else [])],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd="/")
    deadline = time.monotonic() + 15
    while not is_up(lab):
        if controller.poll() is not None or time.monotonic() > deadline:
            tail = lab.controller_log.read_text(errors="replace").strip().splitlines()[-5:]
            raise LabError("the lab controller did not start: " + " / ".join(tail))
        time.sleep(0.05)


def configure_fencing(state: LabState) -> None:
    """Production-like: stonith-enabled with a real fence device covering every node."""
    first = state.node_names[0]
    hosts = " ".join(state.node_names)
    where = [] if state.lab.root.parent == DEFAULT_ROOT else [f"lab_root={state.lab.root.parent}"]
    node_run(state, first, ["pcs", "stonith", "create", FENCE_DEVICE, "fence_ravada_lab",
                            f"lab={state.lab.name}", *where, f"pcmk_host_list={hosts}",
                            "op", "monitor", "interval=60s"])
    node_run(state, first, ["pcs", "property", "set", "stonith-enabled=true"])
    node_run(state, first, ["pcs", "resource", "defaults", "update", "resource-stickiness=100"])


def publish_macs(state: LabState) -> None:
    """Each node's MAC as node attribute ravada-mac, where `ravada-node wake` looks for it."""
    for name in state.node_names:
        node_run(state, state.node_names[0], ["crm_attribute", "--node", name, "--name", "ravada-mac",
                                              "--update", state.info(name)["mac"]])


def connect_remotes(state: LabState) -> None:
    """One ocf:pacemaker:remote connection per remote node (named like it), in one CIB update."""
    count = len(state.remote_nodes)
    layouts = [state.lab.node(name, 0, count) for name in state.remote_nodes]
    node_run(state, state.node_names[0], ["cibadmin", "--create", "--scope", "resources",
                                          "--xml-text", remote.connection_resources(layouts).decode()])


def up(lab: LabLayout, count: int, progress=print, ceph: bool = False,
       link_rate: str | None = None, remote_count: int = 0) -> ClusterView:
    """Bring the lab up: `count` full nodes and `remote_count` pacemaker_remote nodes;
    `link_rate` (tc syntax, e.g. 200mbit) shapes every node's cable."""
    if link_rate is not None:
        shaping.parse_rate(link_rate)
    preflight(lab)
    if remote_count:
        remote.remoted_path()
    if ceph:
        ceph_service.preflight()
    started = time.monotonic()
    try:
        write_lab_files(lab, count, remote_count)
        start_controller(lab, count, link_rate, remote_count)
        progress(f"booting {count} nodes" + (f" and {remote_count} remote nodes" if remote_count
                                             else "") + " ...")
        request(lab.control_socket, "boot", timeout=BOOT_TIMEOUT)
        state = LabState.load(lab)
        progress(f"nodes booted in {time.monotonic() - started:.1f}s; waiting for the cluster ...")
        wait_until(state, lambda v: v.dc is not None and set(state.full_nodes) <= v.online,
                   "all full nodes online with a DC", FORM_TIMEOUT)
        configure_fencing(state)
        if remote_count:
            connect_remotes(state)
            wait_until(state, lambda v: v.settled(state.node_names),
                       "remote nodes connected", FORM_TIMEOUT)
        publish_macs(state)
        view = wait_until(state, lambda v: v.roles.get(FENCE_DEVICE) == "Started",
                          f"fence device {FENCE_DEVICE} started", FORM_TIMEOUT)
        if ceph:
            progress("starting Ceph (1 mon, 1 OSD) on the lab switch ...")
            ceph_service.start(lab)
            ceph_service.attach(state, progress)
            view = wait_until(state, lambda v: v.roles.get(ceph_service.FENCE_DEVICE) == "Started",
                              f"fence device {ceph_service.FENCE_DEVICE} started", FORM_TIMEOUT)
    except BaseException:
        progress("lab did not come up; tearing it down")
        down(lab, progress=lambda _msg: None)
        raise
    progress(f"lab {lab.name!r} up in {time.monotonic() - started:.1f}s")
    return view


def down(lab: LabLayout, progress=print) -> bool:
    """Remove everything of the lab; False when there was nothing to remove."""
    if not lab.root.exists():
        return False
    recorded = _recorded(lab)
    if is_up(lab):
        try:
            request(lab.control_socket, "shutdown", timeout=60)
        except LabError as e:
            progress(f"controller shutdown failed ({e}); killing recorded processes")
    _kill_recorded(recorded)
    # After the nodes: no QEMU is left with an RBD disk open when its Ceph goes.
    ceph_service.stop(lab)
    mounts = _mounts_under(lab.root)
    if mounts:
        raise LabError(f"refusing to delete {lab.root}: still mounted: {', '.join(mounts)}")
    shutil.rmtree(lab.root)
    return True


def _recorded(lab: LabLayout) -> dict:
    try:
        return LabState.load(lab).data
    except (LabError, ValueError):
        return {}


def _kill_recorded(recorded: dict) -> None:
    """Kill what the state file records (after a clean shutdown nothing is left to kill).

    A recorded PID is only signalled while it still sits in the namespace recorded with it:
    after a host reboot the number may belong to somebody else's process.
    """
    switch = recorded.get("switch_netns")
    for info in recorded.get("nodes", {}).values():
        if not info.get("netns"):
            continue
        ns = procs.NamespaceIds(info["netns"], info["pidns"])
        for pid in (info.get("holder"), info.get("launcher")):
            if pid and _in_namespace(pid, ns):
                os.kill(pid, signal.SIGKILL)
        procs.signal_all(procs.members(ns), signal.SIGKILL)
        left = procs.wait_gone(ns, 15)
        if left:
            raise LabError(f"processes {left} of the lab survive SIGKILL")
    controller = recorded.get("controller")
    if controller and switch and _in_namespace(controller, procs.NamespaceIds(switch, -1)):
        if _wait_dead(controller, 5):
            os.kill(controller, signal.SIGTERM)
        if _wait_dead(controller, 30):
            os.kill(controller, signal.SIGKILL)


def _in_namespace(pid: int, ns: procs.NamespaceIds) -> bool:
    try:
        mine = procs.NamespaceIds.of(pid)
    except OSError:
        return False
    return procs.alive(pid) and (mine.net == ns.net or mine.pid == ns.pid)


def _wait_dead(pid: int, timeout: float) -> bool:
    """True when `pid` is still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs.alive(pid)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [t for t in targets if t.startswith(prefix) or t == prefix[:-1]]
