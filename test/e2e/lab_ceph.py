"""A throw-away Ceph cluster on a lab's switch, and RBD-backed seqwriter guests for the lab.

The mon and the memstore OSD of `test/ceph/microceph.py` run in the network namespace of the
lab controller (which holds the lab bridge) with an address on the bridge, so every lab node
reaches them over its own cable, and Ceph sees each node's own address: a node can be fenced
at the OSDs (blocklisted) without cutting off anybody else. The configuration and keyrings live
in the lab's shared directory, which every node sees at the same path.

The test process stays in the host's network namespace: everything that talks to Ceph from
here (starting the daemons, the admin client, image reads for the audit) runs in one thread
that has entered the controller's network namespace; processes and librados threads started
from that thread inherit it.
"""
from __future__ import annotations

import base64
import configparser
import ctypes
import json
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rbd
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ceph"))   # microceph, rbd_domains

from microceph import NODE_USER, POOL, MicroCeph, Node  # noqa: E402
from rbd_domains import rbd_disk_xml  # noqa: E402

from ocf_ravada.lab import vms  # noqa: E402
from ocf_ravada.lab.domains import domain_xml  # noqa: E402
from ocf_ravada.lab.layout import BRIDGE, SUBNET, LabLayout  # noqa: E402
from ocf_ravada.lab.state import LabState  # noqa: E402
from support import seqwriter  # noqa: E402

# Far above the node addresses (.1-.16): the monitor's and OSD's address on the lab switch.
CEPH_IP = str(SUBNET.network_address + 250)
SWITCH_PORT, CEPH_IFACE = "p-ceph", "ceph0"
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


class _SwitchCeph(MicroCeph):
    """MicroCeph plugged into an existing bridge instead of building a network of its own.

    Its address sits on a veth of its own, one end a port of the bridge: a bridge's own MAC
    address follows its ports, and it changes whenever a node's port goes and comes back (a
    power cut, a reboot), leaving the nodes' ARP entries for Ceph pointing nowhere for a minute.
    """

    lab_nodes: dict[str, str] = {}

    def _make_network(self) -> None:
        self.mon_ip = CEPH_IP
        _ip_in_switch("link", "add", SWITCH_PORT, "type", "veth", "peer", "name", CEPH_IFACE)
        self._links.append(SWITCH_PORT)
        _ip_in_switch("link", "set", SWITCH_PORT, "master", BRIDGE, "up")
        _ip_in_switch("addr", "add", f"{CEPH_IP}/{SUBNET.prefixlen}", "dev", CEPH_IFACE)
        _ip_in_switch("link", "set", CEPH_IFACE, "up")
        self.nodes = {name: Node(name, "", ip) for name, ip in self.lab_nodes.items()}


def _ip_in_switch(*argv: str) -> None:
    """`ip` from the Ceph thread: in the controller's namespace, where the bridge is."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


class LabCeph:
    """Ceph on the switch of a running lab; stop() removes the daemons, the address and files."""

    def __init__(self, lab: LabLayout):
        state = LabState.load(lab)
        self.lab = lab
        self.controller = state.data["controller"]
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="lab-ceph",
                                          initializer=_enter_network_namespace,
                                          initargs=(self.controller,))
        self.cluster = _SwitchCeph(lab.shared_dir / "ceph", watch_timeout=10)
        self.cluster.lab_nodes = {name: str(lab.node(name, len(state.node_names)).address)
                                  for name in state.node_names}

    def _call(self, function, *args):
        return self._thread.submit(function, *args).result()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> "LabCeph":
        try:
            self._call(self.cluster.start)
            self._call(self.cluster.make_user, FENCE_USER, FENCE_CAPS)
            self._record_pids()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if getattr(self.cluster, "admin", None) is not None:
                self._call(self.cluster.admin.shutdown)
            self._call(self.cluster.stop)
        finally:
            self._thread.shutdown()

    def _record_pids(self) -> None:
        """For the clean-up of a killed test session (stop_recorded)."""
        (self.lab.root / "ceph-pids.json").write_text(json.dumps(
            {"netns": os.stat(f"/proc/{self.controller}/ns/net").st_ino,
             "pids": list(self.cluster.pids.values())}))

    # ---- paths the agents use ---------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.cluster.conf

    def keyring(self, user: str) -> Path:
        return self.cluster.keyring(user)

    # ---- images -----------------------------------------------------------------------------
    def create_writer_image(self, name: str) -> str:
        """A fresh image whose first sector is the seqwriter guest; returns 'pool/name'."""
        code = seqwriter.boot_sector(DISK_BYTES)
        return self._call(self._create_and_write, name, code)

    def _create_and_write(self, name: str, code: bytes) -> str:
        spec = self.cluster.create_image(name, DISK_BYTES)
        with self.cluster.admin.open_ioctx(POOL) as io, rbd.Image(io, name) as image:
            image.write(code, 0)
        return spec

    def read_image(self, name: str, length: int = 16 << 20) -> bytes:
        return self._call(self.cluster.read, name, 0, length)

    def blocklist(self) -> list[dict]:
        return self._call(self.cluster.blocklist)

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


def stop_recorded(lab: LabLayout) -> None:
    """Kill the Ceph daemons a killed test session left on a stale lab (by recorded PID, only
    while still in the recorded network namespace)."""
    record = lab.root / "ceph-pids.json"
    if not record.exists():
        return
    data = json.loads(record.read_text())
    for pid in data["pids"]:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == data["netns"]:
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
    """The lab's tiny domain, booting the seqwriter from its RBD disk (in the shared dir)."""
    domain = etree.fromstring(domain_xml(name))
    etree.SubElement(domain.find("os"), "boot", dev="hd")
    disk = etree.fromstring(rbd_disk_xml(ceph.cluster, spec, SECRET_UUID))
    domain.find("devices").insert(1, disk)
    path = lab.shared_dir / f"{name}.xml"
    path.write_bytes(etree.tostring(domain, pretty_print=True))
    return path
