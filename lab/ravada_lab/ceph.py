"""A throw-away Ceph cluster on a lab's switch, and RBD-backed guests for the lab.

The mon and the memstore OSD of `microceph.py` run on a "Ceph host" of their own: a
network namespace (held by a `sleep` started here) cabled to the lab switch like a node, so every
lab node reaches Ceph over its own cable, and Ceph sees each node's own address: a node can be
fenced at the OSDs (blocklisted) without cutting off anybody else. The configuration and
keyrings live in the lab's shared directory, which every node sees at the same path.

Not on the switch's own namespace: the bridge would answer ARP for Ceph's address with its own
MAC, which changes whenever a node's port goes or comes back (a power cut, a reboot), and the
nodes would lose Ceph for as long as their ARP entries take to expire.

The process that owns the cluster (a test, or `ravada-lab up --ceph`'s Ceph service) stays in
the host's network namespace: everything that talks to Ceph from it (starting the daemons, the
admin client, image reads) runs in one thread that has entered the Ceph host's network
namespace; processes and librados threads started from that thread inherit it.
"""
from __future__ import annotations

import base64
import configparser
import ctypes
import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import rados
import rbd
from lxml import etree

from ocf_ravada.rbd import owner

from . import vms
from .domains import domain_xml
from .layout import BRIDGE, SUBNET, LabLayout
from .microceph import NODE_USER, POOL, MicroCeph, Node, rbd_disk_xml
from .state import LabState

# Far above the node addresses (.1-.16): the monitor's and OSD's address on the lab switch.
CEPH_IP = str(SUBNET.network_address + 250)
SWITCH_PORT, CEPH_IFACE = "p-ceph", "ceph0"
CEPH_MAC = "02:00:0a:63:00:fa"          # locally administered, from CEPH_IP
FENCE_USER = "fence"
FENCE_CAPS = ["mon", 'allow r, allow command "osd blocklist"']
# One libvirt secret UUID for the node user's key on every lab node.
SECRET_UUID = str(uuid.uuid5(uuid.NAMESPACE_URL, "ravada-lab:ceph-secret"))
DISK_BYTES = 64 << 20
_CLONE_NEWNET = 0x40000000


def _enter_network_namespace(pid: int) -> None:
    """setns(2) for the calling thread only (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into the network namespace of {pid}")
    finally:
        os.close(fd)


@dataclass
class _SwitchCeph(MicroCeph):
    """MicroCeph on the lab's network (cabled by LabCeph) instead of a network of its own."""

    lab_nodes: dict[str, str] = field(default_factory=dict)     # node name -> lab address

    def __post_init__(self) -> None:
        # Known before start(): a process that does not own the cluster writes domain XML too.
        self.mon_ip = CEPH_IP

    def _make_network(self) -> None:
        self.nodes = {name: Node(name, "", ip) for name, ip in self.lab_nodes.items()}


def _ip_in(pid: int, *argv: str) -> None:
    """`ip` in the network namespace of process `pid`."""
    result = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", *argv],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


def _net_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _start_ceph_host(controller: int) -> subprocess.Popen:
    """A network namespace with CEPH_IP on a cable into the lab switch; its holder process."""
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"],
                              stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _net_inode(holder.pid) == _net_inode(os.getpid()):
            if holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("unshare did not create the Ceph host's network namespace")
            time.sleep(0.01)
        # A fixed MAC: a Ceph host started again in the same lab is the one the nodes know.
        _ip_in(controller, "link", "add", SWITCH_PORT, "type", "veth", "peer", "name", CEPH_IFACE,
               "address", CEPH_MAC, "netns", str(holder.pid))
        _ip_in(controller, "link", "set", SWITCH_PORT, "master", BRIDGE, "up")
        _ip_in(holder.pid, "addr", "add", f"{CEPH_IP}/{SUBNET.prefixlen}", "dev", CEPH_IFACE)
        _ip_in(holder.pid, "link", "set", CEPH_IFACE, "up")
        _ip_in(holder.pid, "link", "set", "lo", "up")
    except BaseException:
        _stop_ceph_host(holder)
        raise
    return holder


def _stop_ceph_host(holder: subprocess.Popen) -> None:
    """The namespace goes with its last process, and the cable (a veth pair) with it."""
    holder.kill()
    holder.wait()


class LabCeph:
    """Ceph on the switch of a running lab; stop() removes the daemons, the address and files.

    Unstarted, it names the cluster's files (conf, keyrings) for any process of the host.
    """

    def __init__(self, lab: LabLayout):
        state = LabState.load(lab)
        self.lab = lab
        self.controller = state.data["controller"]
        self.host: subprocess.Popen | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.cluster = _SwitchCeph(
            ceph_dir(lab), watch_timeout=10,
            lab_nodes={name: state.address(name)
                       for name in state.node_names})

    def _call(self, function, *args):
        return self._thread.submit(function, *args).result()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> "LabCeph":
        try:
            self.host = _start_ceph_host(self.controller)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="lab-ceph",
                                              initializer=_enter_network_namespace,
                                              initargs=(self.host.pid,))
            self._call(self.cluster.start)
            self._call(self.cluster.make_user, FENCE_USER, FENCE_CAPS)
            self._record_pids()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if self._thread is not None:
                if getattr(self.cluster, "admin", None) is not None:
                    self._call(self.cluster.admin.shutdown)
                self._call(self.cluster.stop)
                self._thread.shutdown()
        finally:
            if self.host is not None:
                _stop_ceph_host(self.host)

    def _record_pids(self) -> None:
        """For the clean-up after a killed owner (stop_recorded)."""
        pids_file(self.lab).write_text(json.dumps(
            {"netns": _net_inode(self.host.pid),
             "pids": [*self.cluster.pids.values(), self.host.pid]}))

    # ---- paths the agents use ---------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.cluster.conf

    def keyring(self, user: str) -> Path:
        return self.cluster.keyring(user)

    # ---- images -----------------------------------------------------------------------------
    def create_image(self, name: str, boot_sector: bytes = b"") -> str:
        """A fresh DISK_BYTES image starting with `boot_sector`; returns 'pool/name'."""
        return self._call(self._create_and_write, name, boot_sector)

    def _create_and_write(self, name: str, boot_sector: bytes) -> str:
        spec = self.cluster.create_image(name, DISK_BYTES)
        if boot_sector:
            with self.cluster.admin.open_ioctx(POOL) as io, rbd.Image(io, name) as image:
                image.write(boot_sector, 0)
        return spec

    def read_image(self, name: str, length: int = 16 << 20) -> bytes:
        return self._call(self.cluster.read, name, 0, length)

    def blocklist(self) -> list[dict]:
        return self._call(self.cluster.blocklist)

    def owner_record(self, name: str) -> dict | None:
        """The agent's owner record of image `name` (rbd/owner.py), None when there is none."""
        return self._call(self._read_owner_record, name)

    def _read_owner_record(self, name: str) -> dict | None:
        with self.cluster.admin.open_ioctx(POOL) as io:
            try:
                return json.loads(io.read(owner.OBJECT_PREFIX + name, owner.MAX_RECORD_BYTES))
            except rados.ObjectNotFound:
                return None

    def blocklist_changes(self, user: str) -> list[tuple[str, str]]:
        """(add|rm, address) of every blocklist change `user` made, from the monitor's audit
        log: the record that outlives the entries themselves (unfencing removes them)."""
        changes = []
        for line in (self.cluster.workdir / "log" / "mon.a.log").read_text().splitlines():
            if f"entity='client.{user}'" not in line or not line.endswith("': finished"):
                continue
            command = json.loads(line[line.index("cmd='") + 5:-len("': finished")])[0]
            if command.get("prefix") == "osd blocklist":
                changes.append((command["blocklistop"], command["addr"]))
        return changes


def ceph_dir(lab: LabLayout) -> Path:
    """The cluster's configuration, keyrings, data and logs, at one path on every node."""
    return lab.shared_dir / "ceph"


def pids_file(lab: LabLayout) -> Path:
    return lab.root / "ceph-pids.json"


def stop_recorded(lab: LabLayout) -> None:
    """Kill the Ceph daemons and host a killed owner left on a lab (by recorded PID, only
    while still in the recorded network namespace)."""
    record = pids_file(lab)
    if not record.exists():
        return
    data = json.loads(record.read_text())
    for pid in data["pids"]:
        try:
            if _net_inode(pid) == data["netns"]:
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


# ---- libvirt side ---------------------------------------------------------------------------
def define_ceph_secret(state: LabState, node: str, ceph: LabCeph) -> None:
    """The node user's key as a persistent libvirt secret (same UUID on every node)."""
    keyring = configparser.ConfigParser()
    keyring.read(ceph.keyring(NODE_USER))
    secret = etree.Element("secret", ephemeral="no", private="yes")
    etree.SubElement(secret, "uuid").text = SECRET_UUID
    usage = etree.SubElement(secret, "usage", type="ceph")
    etree.SubElement(usage, "name").text = f"client.{NODE_USER} lab"
    conn = vms.libvirt_connection(state, node)
    try:
        handle = conn.secretDefineXML(etree.tostring(secret).decode())
        handle.setValue(base64.b64decode(keyring[f"client.{NODE_USER}"]["key"]))
    finally:
        conn.close()


def write_rbd_domain(lab: LabLayout, name: str, ceph: LabCeph, spec: str) -> Path:
    """The lab's tiny domain, booting from its RBD disk (its XML in the shared dir)."""
    domain = etree.fromstring(domain_xml(name))
    etree.SubElement(domain.find("os"), "boot", dev="hd")
    disk = etree.fromstring(rbd_disk_xml(ceph.cluster, spec, SECRET_UUID))
    domain.find("devices").insert(1, disk)
    path = lab.shared_dir / f"{name}.xml"
    path.write_bytes(etree.tostring(domain, pretty_print=True))
    return path
