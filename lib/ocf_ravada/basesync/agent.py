"""ocf:ravada:basesync (run it as a clone on every node, the main node included).

start     checks the set-up and launches the worker (worker.py), which copies in the
          background: start returns as soon as the work is scheduled
stop      stops this resource's worker (recorded PID and start time) and nothing else;
          published attributes stay (the copies stay, and stay verified)
monitor   reads the worker's report: logs progress (bytes, rate, ETA), restarts a worker
          that died, fails only for what the agent cannot repair (no space, a wrong copy a
          VM uses, a bad manifest, the main node's own copy wrong); depth 20 asks the worker
          to re-hash every copy and waits for it while the timeout allows
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

from .. import __version__
from ..agent import Agent
from ..metadata import Action, AgentInfo
from ..ocf import OcfError, Rc
from ..params import Parameter
from ..statefile import StateFile
from . import process
from .manifest import NODE
from .status import failures, summary
from .transfer import SAFE_OPTION, SshOptions
from .worker import Config, status_file

HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
NEEDED_TOOLS = ("rsync", "ssh", "qemu-img")
CONTROL_DIR_MAX = 40


def _absolute_safe_path(value: str) -> str | None:
    if not os.path.isabs(value):
        return "must be an absolute path"
    if not SAFE_OPTION.fullmatch(value) or "/../" in value + "/":
        return "only letters, digits and _ . / @ % + = : , - are allowed"
    return None


def _node_name(value: str) -> str | None:
    return None if NODE.fullmatch(value) else "not a node name"


def _user(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", value) else "not a user name"


def parse_hosts(value: str) -> dict[str, str]:
    hosts = {}
    for item in value.split():
        node, sep, host = item.partition("=")
        if not sep or not NODE.fullmatch(node) or not HOST.fullmatch(host):
            raise ValueError(f"expected NODE=HOST pairs, got {item[:40]!r}")
        hosts[node] = host
    return hosts


def _hosts(value: str) -> str | None:
    try:
        parse_hosts(value)
    except ValueError as err:
        return str(err)
    return None


P = Parameter
PARAMETERS: tuple[Parameter, ...] = (
    P("source", "Main node",
      "Name of the cluster node that holds the original bases and their manifest "
      "(DIRECTORY/.basesync/manifest.json, written with ravada-basesync add).",
      required=True, check=_node_name),
    P("directory", "Base directory",
      "Absolute path of the directory the bases live in, the same on every node (a libvirt "
      "storage pool's directory). Every peer must serve it read-only to this node's key with "
      "the forced command 'rrsync -ro DIRECTORY'.",
      default="/var/lib/libvirt/images", check=_absolute_safe_path),
    P("ssh_user", "ssh user", "User to log in as on peers (its authorized key runs rrsync -ro).",
      default="root", check=_user),
    P("ssh_key", "ssh private key",
      "Private key used to reach peers. Empty: ssh's default identities.",
      check=_absolute_safe_path),
    P("ssh_port", "ssh port", "Port of the peers' sshd.", type="integer", default=22,
      minimum=1, maximum=65535),
    P("known_hosts", "Known hosts file",
      "File with the peers' host keys (ssh's UserKnownHostsFile). Host keys are always "
      "verified; empty: ssh's default files (~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts).",
      check=_absolute_safe_path),
    P("hosts", "Peer addresses",
      "Space separated NODE=HOST pairs: the address ssh uses for a node. Nodes not listed "
      "are reached by their node name.", check=_hosts),
    P("bwlimit", "Bandwidth limit (KiB/s)",
      "Largest rate one transfer may use, in KiB/s (rsync --bwlimit); 0: no limit.",
      type="integer", default=0, minimum=0),
    P("reserve", "Free space kept (MiB)",
      "A base is fetched only if at least this much space stays free in the directory "
      "afterwards; otherwise the node refuses it (monitor fails with the reason).",
      type="integer", default=1024, minimum=0),
    P("concurrency", "Bases at a time", "How many bases are copied at the same time.",
      type="integer", default=1, minimum=1, maximum=16),
    P("poll_interval", "Manifest check interval (s)",
      "How often the worker reads the manifest again and checks the copies.",
      type="integer", default=30, minimum=1, maximum=86400),
    P("stall_timeout", "Stall timeout (s)",
      "A holder that sends nothing for this long is left for another one.",
      type="integer", default=30, minimum=2, maximum=3600),
    P("pace", "Chain pacing (%)",
      "A node that copies a complete base while other nodes follow it in the chain copies at "
      "this percentage of the rate it measures in its first seconds, so the followers catch "
      "up instead of falling further behind at each hop. 0: full speed.",
      type="integer", default=0, minimum=0, maximum=100),
    P("hypervisor", "Hypervisor URI",
      "libvirt URI whose defined and running domains may use bases (never deleted or "
      "replaced while used). Default: libvirt's default URI."),
)

ACTIONS = (
    Action("start", 60),
    Action("stop", 60),
    Action("monitor", 60, interval=60, depth=0),
    Action("monitor", 600, interval=3600, depth=20),
    Action("meta-data", 5),
    Action("validate-all", 20),
)

INFO = AgentInfo(
    name="basesync",
    version=__version__,
    shortdesc="Keeps Ravada's base volumes on every node, verified",
    longdesc=(
        "Copies the bases listed in the main node's manifest (name, size, SHA-256, format, "
        "backing chain, nodes) to this node, from the main node or any peer holding a copy, "
        "with rsync over ssh (host keys verified, rrsync -ro on the serving side). Nodes form "
        "a pipelined chain, so the main node's uplink carries each base once instead of once per node. A copy is verified "
        "against the SHA-256, fsync'ed, made read-only and renamed into place; only then is "
        "node attribute ravada-base-<name>=<sha256> published (the location rule of "
        "cib-templates/base-location.xml keeps VMs with meta ravada-base=<name> off nodes "
        "without it). Free space is checked against reserve; a base a libvirt domain or a "
        "qcow2 overlay uses is never deleted or replaced. Copying runs in a background "
        "worker; monitor reports progress. Run it as a clone."),
    parameters=PARAMETERS,
    actions=ACTIONS,
)


class BaseSync(Agent):
    info = INFO

    @property
    def state(self) -> StateFile:
        return StateFile(self.env.rsc_tmp, "basesync", self.env.resource)

    @property
    def status(self) -> StateFile:
        return status_file(self.env.rsc_tmp, self.env.resource)

    @property
    def in_cluster(self) -> bool:
        return bool(self.env.get("OCF_RESKEY_crm_feature_set"))

    # -- actions ------------------------------------------------------------------------

    def validate_all(self) -> int:
        if self.env.check_level() >= 10:
            self.check_environment()
        return Rc.SUCCESS

    def check_environment(self) -> None:
        for tool in NEEDED_TOOLS:
            if shutil.which(tool) is None:
                raise OcfError(Rc.ERR_INSTALLED, f"{tool} is not installed")
        directory = self.params["directory"]
        if not os.path.isdir(directory):
            raise OcfError(Rc.ERR_INSTALLED, f"base directory {directory} does not exist on this node")
        for name in ("ssh_key", "known_hosts"):
            path = self.params[name]
            if path and not os.path.isfile(path):
                raise OcfError(Rc.ERR_INSTALLED, f"{name} {path} does not exist on this node")

    def start(self) -> int:
        self.check_environment()
        recorded = self.state.load()
        if recorded.get("pid") and process.alive(recorded["pid"], recorded.get("ticks", -1)):
            return Rc.SUCCESS
        self.launch()
        return Rc.SUCCESS

    def launch(self) -> None:
        config = self.config()
        config_path = os.path.join(self.env.rsc_tmp, f"basesync-{self.safe_resource}.config")
        with open(config_path + ".new", "w", encoding="utf-8") as handle:
            json.dump(config.to_json(), handle)
        os.replace(config_path + ".new", config_path)
        log_path = os.path.join(self.env.rsc_tmp, f"basesync-{self.safe_resource}.log")
        self.status.remove()
        pid, ticks = process.spawn(config_path, log_path)
        self.state.save({"pid": pid, "ticks": ticks, "started": time.time()})
        self.log.info(f"worker {pid} started for {config.directory} (main node {config.source})")
        while not self.deadline.expired() and self.deadline.remaining() > 2.0:
            if self.status.load():
                return
            if not process.alive(pid, ticks):
                raise OcfError(Rc.ERR_GENERIC, f"the worker exited at once (see {log_path})")
            self.deadline.sleep(0.2)

    @property
    def safe_resource(self) -> str:
        return self.env.resource.replace("/", "%2F")

    def node(self) -> str:
        node = self.env.meta("on_node")
        if node:
            return node
        from .. import pacemaker
        try:
            return pacemaker.local_node(self.deadline, limit=10.0)
        except pacemaker.PacemakerError:
            return os.uname().nodename

    def config(self) -> Config:
        p = self.params
        return Config(node=self.node(), source=p["source"], directory=p["directory"].rstrip("/") or "/",
                      resource=self.env.resource,
                      ssh=SshOptions(user=p["ssh_user"], port=p["ssh_port"], key=p["ssh_key"] or None,
                                     known_hosts=p["known_hosts"] or None, bwlimit_kib=p["bwlimit"],
                                     io_timeout=p["stall_timeout"],
                                     control_dir=self.control_dir()),
                      hosts=parse_hosts(p["hosts"] or ""), reserve_mib=p["reserve"],
                      concurrency=p["concurrency"], poll_interval=p["poll_interval"],
                      stall_timeout=p["stall_timeout"], pace_percent=p["pace"],
                      hypervisor=p["hypervisor"] or None,
                      in_cluster=self.in_cluster, state_dir=self.env.rsc_tmp)

    def control_dir(self) -> str | None:
        """Where ssh keeps shared connections; None (no sharing) when a socket path there
        would pass the 108-byte limit of Unix sockets (ssh adds 41 bytes and a temp suffix)."""
        path = os.path.join(self.env.rsc_tmp, "basesync-ssh")
        return path if len(path) <= CONTROL_DIR_MAX else None

    def stop(self) -> int:
        recorded = self.state.load()
        pid, ticks = recorded.get("pid"), recorded.get("ticks")
        if isinstance(pid, int) and isinstance(ticks, int):
            if not process.stop(pid, ticks, self.deadline):
                raise OcfError(Rc.ERR_GENERIC, f"worker {pid} did not stop")
            self.log.info(f"worker {pid} stopped")
        self.state.remove()
        self.status.remove()
        return Rc.SUCCESS

    def monitor(self) -> int:
        recorded = self.state.load()
        if not recorded:
            return Rc.NOT_RUNNING
        if self.is_probe:
            return Rc.SUCCESS
        pid, ticks = recorded.get("pid", 0), recorded.get("ticks", -1)
        if not process.alive(pid, ticks):
            self.log.warning(f"worker {pid} is gone; starting a new one")
            self.check_environment()
            self.launch()
            return Rc.SUCCESS
        if self.env.check_level() >= 20:
            self.rehash(pid, ticks)
        report = self.status.load()
        self.log.info(summary(report))
        problems = failures(report)
        if problems:
            raise OcfError(Rc.ERR_GENERIC, problems[0])
        return Rc.SUCCESS

    def rehash(self, pid: int, ticks: int) -> None:
        """Ask the worker to hash every copy again; wait for that pass while time allows."""
        before = int(self.status.load().get("rehashed", 0))
        process.signal_worker(pid, ticks, signal.SIGUSR1)
        while self.deadline.pause(1.0):
            if int(self.status.load().get("rehashed", 0)) > before:
                return
        self.log.info("re-hash still running; later monitors report what it finds")
