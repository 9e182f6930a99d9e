"""A throw-away Ceph cluster for the lab, tests and benchmarks: 1 mon + 1 memstore OSD, cephx
on, no mgr.

The cluster listens on a private bridge; each simulated hypervisor ("node") is a network
namespace with its own address on that bridge, so Ceph sees a different client IP per node
and node-wide fencing (blocklisting a node's IP) can be exercised without cutting off the test
itself.  Nothing leaves the machine: the namespaces have no default route.

Everything started here is recorded (daemon PIDs, namespaces, links) and removed by stop().
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import rados
import rbd
from lxml import etree

POOL = "vmpool"
NODE_USER = "node"          # 'profile rbd' on mon and pool: may blocklist, like client.libvirt
ROOT_NODE = "node-r"        # the test process's own namespace, where the cluster listens too
NOCAP_USER = "nocap"        # mon 'allow r': the classic misconfiguration, may not blocklist
IMAGE_FEATURES = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                  | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)


class MicroCephError(RuntimeError):
    pass


@dataclass
class Node:
    """A simulated hypervisor: a network namespace with one address on the cluster bridge."""
    name: str
    netns: str
    ip: str

    def argv(self, *argv: str) -> list[str]:
        """The command line that runs argv inside this node's namespace (exec, so the PID is
        argv's).  The root namespace is a node too: the one the test process itself is on."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


@dataclass
class MicroCeph:
    workdir: Path
    watch_timeout: int = 10
    # The OSD keeps every object in RAM and blocks writes when this is full.
    memstore_bytes: int = 512 << 20
    node_names: tuple[str, ...] = ("node-a", "node-b", "node-c")
    nodes: dict[str, Node] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)
    _netns: list[str] = field(default_factory=list)

    # ---- layout -----------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.workdir / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.workdir / "keyring"

    def keyring(self, user: str) -> Path:
        return self.workdir / f"ceph.client.{user}.keyring"

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("mon", "osd/ceph-0", "log", "run"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._make_network()
            self._write_conf()
            self._make_keys()
            self._start_mon()
            self._start_osd()
            self._make_pool_and_users()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop only the daemons started here (memstore: nothing to flush, so SIGKILL), remove
        the namespaces and links made here, then the directory."""
        for name in ("osd.0", "mon.a"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _kill_and_reap(pid)
        for ns in self._netns:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        self._netns.clear()
        self._links.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- network ----------------------------------------------------------------------------
    def _make_network(self) -> None:
        tag = f"rbt{os.getpid() % 100000}"
        subnet = _free_subnet()
        self.mon_ip = f"{subnet}.1"
        bridge = f"{tag}br"
        _ip("link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _ip("addr", "add", f"{self.mon_ip}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(self.node_names):
            netns, outer = f"{tag}-{name}", f"{tag}{name[-1]}"
            node_ip = f"{subnet}.{11 + i}"
            _ip("netns", "add", netns)
            self._netns.append(netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns)
            self._links.append(outer)
            _ip("link", "set", outer, "master", bridge, "up")
            _ip("-n", netns, "addr", "add", f"{node_ip}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.nodes[name] = Node(name, netns, node_ip)
        self.nodes[ROOT_NODE] = Node(ROOT_NODE, "", self.mon_ip)

    # ---- config and keys --------------------------------------------------------------------
    def _write_conf(self) -> None:
        d = self.workdir
        self.fsid = str(uuid.uuid4())
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon host = [v2:{self.mon_ip}:3300,v1:{self.mon_ip}:6789]
public addr = {self.mon_ip}
cluster addr = {self.mon_ip}
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = {d}/run
log file = {d}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
# short paxos rounds: the cluster is usable in ~2 s instead of ~9 s
paxos propose interval = 0.1
# a dead client's watch expires after this long; global so clients read the same value
osd client watch timeout = {self.watch_timeout}
[mon]
mon data = {d}/mon/$cluster-$id
admin socket = {d}/run/$cluster-$name.asok
keyring = {d}/keyring
[osd]
osd data = {d}/osd/$cluster-$id
admin socket = {d}/run/$cluster-$name.asok
keyring = {d}/keyring
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd op num shards = 1
osd op num threads per shard = 2
[client]
# many processes share one client name: one admin socket each
admin socket = {d}/run/$cluster-$name.$pid.asok
[client.admin]
keyring = {d}/keyring
""")

    def _make_keys(self) -> None:
        kr = str(self.admin_keyring)
        _run("ceph-authtool", "--create-keyring", kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        _run("ceph-authtool", kr, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
             "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *")
        _run("ceph-authtool", kr, "--gen-key", "-n", "osd.0", "--cap", "mon", "allow profile osd",
             "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd")

    # ---- daemons ----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        # Output to a file: a daemon holding the caller's pipe would keep CI log capture open.
        with open(self.workdir / "log" / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pids[name] = proc.pid

    def _start_mon(self) -> None:
        monmap = self.workdir / "monmap"
        _run("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
             f"[v2:{self.mon_ip}:3300,v1:{self.mon_ip}:6789]", str(monmap))
        _run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
             "--keyring", str(self.admin_keyring))
        self._spawn("mon.a", ["ceph-mon", "-c", str(self.conf), "-i", "a", "-f"])
        deadline = time.monotonic() + 30
        while True:
            try:
                self.admin = self.client("admin", timeout=2)
                return
            except rados.Error:
                if time.monotonic() > deadline:
                    raise MicroCephError("mon did not answer within 30 s; see " + str(self.workdir / "log"))
                time.sleep(0.1)

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        out = self.mon_command(prefix="osd new", uuid=osd_uuid, format="json")
        if json.loads(out)["osdid"] != 0:
            raise MicroCephError(f"unexpected OSD id in {out!r}")
        _run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn("osd.0", ["ceph-osd", "-c", str(self.conf), "-i", "0", "-f"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            osds = json.loads(self.mon_command(prefix="osd dump", format="json"))["osds"]
            if osds and osds[0]["up"] == 1 and osds[0]["in"] == 1:
                return
            time.sleep(0.1)
        raise MicroCephError("osd.0 did not come up within 60 s")

    def _make_pool_and_users(self) -> None:
        self.admin.create_pool(POOL)
        self.mon_command(prefix="osd pool application enable", pool=POOL, app="rbd")
        with self.admin.open_ioctx(POOL) as io:
            rbd.RBD().pool_init(io, False)
        self.make_user(NODE_USER, ["mon", "profile rbd", "osd", f"profile rbd pool={POOL}"])
        self.make_user(NOCAP_USER, ["mon", "allow r", "osd", f"profile rbd pool={POOL}"])

    # ---- helpers for tests ------------------------------------------------------------------
    def client(self, user: str, timeout: int = 10) -> rados.Rados:
        conf = {} if user == "admin" else {"keyring": str(self.keyring(user))}
        cluster = rados.Rados(conffile=str(self.conf), rados_id=user, conf=conf)
        try:
            cluster.connect(timeout=timeout)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def mon_command(self, **cmd) -> bytes:
        ret, out, err = self.admin.mon_command(json.dumps(cmd), b"", timeout=20)
        if ret != 0:
            raise MicroCephError(f"mon command {cmd} failed: {ret} {err}")
        return out

    def make_user(self, user: str, caps: list[str]) -> Path:
        out = self.mon_command(prefix="auth get-or-create", entity=f"client.{user}", caps=caps)
        # 0600 from the start: the agent warns about a keyring others can read.
        fd = os.open(self.keyring(user), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as keyring:
            keyring.write(out)
        return self.keyring(user)

    def create_image(self, name: str, size: int = 64 << 20) -> str:
        with self.admin.open_ioctx(POOL) as io:
            rbd.RBD().create(io, name, size, old_format=False, features=IMAGE_FEATURES)
        return f"{POOL}/{name}"

    def blocklist(self) -> list[dict]:
        out = self.mon_command(prefix="osd blocklist ls", format="json").decode() or "[]"
        # Pacific prints "[entries][range entries]": take the first array only
        entries, _ = json.JSONDecoder().raw_decode(out)
        return entries

    def node_map_text(self) -> str:
        """The node -> IP map in the form fence_rbd and ravada-rbd take."""
        return ";".join(f"{n.name}:{n.ip}" for n in self.nodes.values())

    def image_state(self, name: str) -> dict:
        """Watchers and lockers of image `name` ('image' or 'namespace/image') in the pool."""
        namespace, _, image = name.rpartition("/")
        with self.admin.open_ioctx(POOL) as io:
            io.set_namespace(namespace)
            with rbd.Image(io, image, read_only=True) as img:
                return _state_of(img)

    def read(self, name: str, offset: int, length: int) -> bytes:
        with self.admin.open_ioctx(POOL) as io, rbd.Image(io, name, read_only=True) as img:
            return img.read(offset, length)


def rbd_disk_xml(ceph, spec: str, secret_uuid: str) -> str:
    disk = etree.Element("disk", type="network", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw", cache="none")
    source = etree.SubElement(disk, "source", protocol="rbd", name=spec)
    etree.SubElement(source, "host", name=ceph.mon_ip, port="6789")
    etree.SubElement(source, "config", file=str(ceph.conf))
    auth = etree.SubElement(disk, "auth", username=NODE_USER)
    etree.SubElement(auth, "secret", type="ceph", uuid=secret_uuid)
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    return etree.tostring(disk).decode()


def _state_of(img: rbd.Image) -> dict:
    lockers = img.list_lockers() or {}
    return {"watchers": [w["addr"] for w in img.watchers_list()],
            "lockers": [tuple(x) for x in lockers.get("lockers", [])]}


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MicroCephError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def _ip(*argv: str) -> None:
    _run("ip", *argv)


def _free_subnet() -> str:
    """A 10.213.X/24 no interface of this machine uses (other test runs may hold some)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    start = os.getpid() % 200
    for i in range(200):
        prefix = f"10.213.{(start + i) % 200 + 10}"
        if f" {prefix}." not in used:
            return prefix
    raise MicroCephError("no free 10.213.x.0/24 subnet")
